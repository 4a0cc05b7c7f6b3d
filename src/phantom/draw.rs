//! Drawing one apical-four-chamber-like cine: a speckled ultrasound sector with the apex at the
//! top, four chambers (the left ventricle beating with a set ejection fraction), device
//! artefacts, an ECG strip and burned-in text outside the sector.
//!
//! Coordinates are fractions of the image side (x right, y down). Volumes follow the prolate
//! ellipsoid rule V ∝ a·b², so scaling both semi-axes by s scales the volume by s³: the
//! end-systolic scale is (1 − EF)^(1/3).

use crate::media::Frame;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A patient's heart: what persists across their studies (until a transplant replaces it).
#[derive(Clone, Debug, PartialEq)]
pub struct Anatomy {
    /// Left-ventricle centre at end-diastole.
    pub lv_centre: (f64, f64),
    /// LV long and short semi-axes at end-diastole for an EF of 55 % (dilation scales them).
    pub lv_axes: (f64, f64),
    /// Tilt of the long axis from vertical, radians.
    pub tilt: f64,
    /// Right-ventricle size factor.
    pub rv_size: f64,
    /// Left-atrium and right-atrium size factors.
    pub atria: (f64, f64),
    /// Myocardium brightness.
    pub wall: f64,
    /// Myocardium thickness (fraction of the image side).
    pub thickness: f64,
}

impl Anatomy {
    /// A random heart.
    pub fn random(rng: &mut StdRng) -> Self {
        Anatomy {
            lv_centre: (0.60 + rng.random_range(-0.025..0.025), 0.40 + rng.random_range(-0.025..0.025)),
            lv_axes: (0.20 * rng.random_range(0.93..1.07), 0.095 * rng.random_range(0.92..1.08)),
            tilt: rng.random_range(-0.12..0.12),
            rv_size: rng.random_range(0.8..1.25),
            atria: (rng.random_range(0.8..1.45), rng.random_range(0.8..1.35)),
            wall: rng.random_range(0.45..0.75),
            thickness: rng.random_range(0.022..0.04),
        }
    }
}

/// Devices visible in a study.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    /// Pacemaker lead through the right heart.
    pub pacemaker: bool,
    /// Aortic valve prosthesis (bright ring).
    pub valve: bool,
    /// Clip on the mitral leaflets.
    pub mitraclip: bool,
}

/// Everything that decides one cine's pixels.
#[derive(Clone, Debug)]
pub struct Scene {
    /// The heart.
    pub anatomy: Anatomy,
    /// Ejection fraction, percent.
    pub ef: f64,
    /// Heart rate, beats per minute.
    pub heart_rate: f64,
    /// Devices.
    pub devices: Devices,
    /// Image side, pixels.
    pub size: usize,
    /// Frame count.
    pub frames: usize,
    /// Frames per second.
    pub fps: f64,
    /// Seed of this acquisition's speckle, probe jitter and cycle phase.
    pub seed: u64,
}

/// LV dilation for an ejection fraction: failing ventricles are larger (1.0 at EF 55 %), as in
/// dilated cardiomyopathy, so that one frame already hints at the EF, as it does in real echo.
pub fn dilation(ef: f64) -> f64 {
    (1.0 + 0.7 * (55.0 - ef) / 45.0).clamp(0.8, 1.6)
}

/// Myocardial thickness factor: thin walls in failing ventricles, thick in hyperdynamic ones.
pub fn wall_factor(ef: f64) -> f64 {
    0.55 + 0.9 * ef / 80.0
}

const APEX: (f64, f64) = (0.5, 0.07);
const SECTOR_RADIUS: f64 = 0.80;
const SECTOR_HALF_ANGLE: f64 = 0.70;

/// Distance-like measure of a point to an ellipse tilted by an angle of sine `s`, cosine `co`:
/// < 1 inside.
fn ellipse(p: (f64, f64), c: (f64, f64), a: f64, b: f64, (s, co): (f64, f64)) -> f64 {
    let (dx, dy) = (p.0 - c.0, p.1 - c.1);
    // The long axis a runs along the (tilted) vertical.
    let along = dx * s + dy * co;
    let across = dx * co - dy * s;
    ((along / a).powi(2) + (across / b).powi(2)).sqrt()
}

fn seg_dist(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (vx, vy) = (b.0 - a.0, b.1 - a.1);
    let t = (((p.0 - a.0) * vx + (p.1 - a.1) * vy) / (vx * vx + vy * vy)).clamp(0.0, 1.0);
    ((p.0 - a.0 - t * vx).powi(2) + (p.1 - a.1 - t * vy).powi(2)).sqrt()
}

/// Draws the cine.
pub fn render(scene: &Scene) -> Vec<Frame> {
    let n = scene.size;
    let mut rng = StdRng::seed_from_u64(scene.seed);
    // Acquisition: probe jitter, gain, speckle, where in the cycle the clip starts.
    let shift = (rng.random_range(-0.01..0.01), rng.random_range(-0.01..0.01));
    let gain = rng.random_range(0.9..1.1);
    let phase0 = rng.random_range(0.0..1.0);
    let speckle: Vec<f64> = (0..n * n).map(|_| rayleigh(&mut rng, 0.42)).collect();
    let a = &scene.anatomy;
    let dil = dilation(scene.ef);
    let es_scale = (1.0 - scene.ef / 100.0).cbrt();
    let beats_per_frame = scene.heart_rate / 60.0 / scene.fps;
    let lead_wiggle = rng.random_range(-0.01..0.01);
    let mut frames = Vec::with_capacity(scene.frames);
    for t in 0..scene.frames {
        let phase = (phase0 + t as f64 * beats_per_frame).fract();
        // Contraction 0 at end-diastole (phase 0), 1 at end-systole (phase 0.35), relaxed by 0.7.
        let c = if phase < 0.35 {
            0.5 - 0.5 * (std::f64::consts::PI * phase / 0.35).cos()
        } else if phase < 0.7 {
            0.5 + 0.5 * (std::f64::consts::PI * (phase - 0.35) / 0.35).cos()
        } else {
            0.0
        };
        let lv_scale = dil * (1.0 - (1.0 - es_scale) * c);
        // The wall thickens as it contracts.
        let lv_wall = a.thickness * wall_factor(scene.ef) * (1.0 + 0.2 * c);
        let (la, lb) = (a.lv_axes.0 * lv_scale, a.lv_axes.1 * lv_scale);
        // The base moves towards the apex in systole; the apex stays put.
        let lv_c = (a.lv_centre.0 + shift.0, a.lv_centre.1 + shift.1 - 0.03 * c);
        let rv_c = (lv_c.0 - 0.22 - 0.02 * (dil - 1.0), 0.39 + shift.1 - 0.02 * c);
        let rv_scale = a.rv_size * (1.0 - 0.15 * c);
        let la_c = (lv_c.0 + 0.01, 0.72 + shift.1);
        let ra_c = (rv_c.0 + 0.01, 0.71 + shift.1);
        // Atria fill while the ventricles contract.
        let (la_r, ra_r) = (0.08 * a.atria.0 * (0.9 + 0.1 * c), 0.075 * a.atria.1 * (0.9 + 0.1 * c));
        let mv = (lv_c.0, lv_c.1 + la + 0.01);
        let (tilt_lv, tilt_rv, upright) = (a.tilt.sin_cos(), (-a.tilt * 0.5).sin_cos(), (0.0, 1.0));
        let mut rgb = vec![0u8; n * n * 3];
        for y in 0..n {
            for x in 0..n {
                let p = ((x as f64 + 0.5) / n as f64, (y as f64 + 0.5) / n as f64);
                let (dx, dy) = (p.0 - APEX.0, p.1 - APEX.1);
                let r = (dx * dx + dy * dy).sqrt();
                let ang = dx.atan2(dy);
                if r > SECTOR_RADIUS || ang.abs() > SECTOR_HALF_ANGLE || dy < 0.0 {
                    continue;
                }
                let d_lv = ellipse(p, lv_c, la, lb, tilt_lv);
                let d_rv = ellipse(p, rv_c, 0.17 * rv_scale, 0.07 * rv_scale, tilt_rv);
                let d_la = ellipse(p, la_c, la_r, la_r * 1.1, upright);
                let d_ra = ellipse(p, ra_c, ra_r, ra_r * 1.1, upright);
                let inside = d_lv < 1.0 || d_rv < 1.0 || d_la < 1.0 || d_ra < 1.0;
                // Walls: a bright band just outside each cavity.
                let near = |d: f64, size: f64, t: f64| d >= 1.0 && (d - 1.0) * size < t;
                let wall = near(d_lv, lb, lv_wall)
                    || near(d_rv, 0.07 * rv_scale, a.thickness)
                    || near(d_la, la_r, a.thickness)
                    || near(d_ra, ra_r, a.thickness);
                let mut v = if inside {
                    0.05
                } else if wall {
                    a.wall
                } else {
                    0.22
                };
                // Depth attenuation and speckle.
                v *= (1.0 - 0.35 * r / SECTOR_RADIUS) * speckle[y * n + x] * gain;
                let mut v = v + 0.04 * rng.random_range(0.0..1.0);
                if scene.devices.pacemaker {
                    let top = (ra_c.0 - 0.04, ra_c.1 + 0.10);
                    let mid = (ra_c.0 + 0.01 + lead_wiggle, ra_c.1 - 0.05);
                    let tip = (rv_c.0 + 0.03, rv_c.1 - 0.12 * rv_scale + 0.01 * c);
                    if seg_dist(p, top, mid).min(seg_dist(p, mid, tip)) < 0.012 {
                        v = v.max(0.95);
                    }
                }
                if scene.devices.valve {
                    let centre = (mv.0 - 0.10, mv.1 - 0.02);
                    let d = ((p.0 - centre.0).powi(2) + (p.1 - centre.1).powi(2)).sqrt();
                    if (d - 0.045).abs() < 0.016 {
                        v = v.max(0.9);
                    }
                }
                if scene.devices.mitraclip {
                    // The clip grasps both leaflets: a bright bar across the valve with a knob.
                    let d = seg_dist(p, (mv.0 - 0.045, mv.1 + 0.01), (mv.0 + 0.045, mv.1 - 0.01))
                        .min(((p.0 - mv.0).powi(2) + (p.1 - mv.1 - 0.02).powi(2)).sqrt() - 0.015);
                    if d < 0.018 {
                        v = v.max(1.0);
                    }
                }
                let g = (v.clamp(0.0, 1.0) * 255.0) as u8;
                rgb[(y * n + x) * 3..(y * n + x) * 3 + 3].copy_from_slice(&[g, g, g]);
            }
        }
        draw_ecg(&mut rgb, n, scene, phase0, t);
        let label = format!("HR {:.0}", scene.heart_rate);
        draw_text(&mut rgb, n, 2, 2, &label, [200, 200, 200]);
        draw_text(&mut rgb, n, n.saturating_sub(4 * 7 + 2), 2, "A4C", [200, 200, 200]);
        frames.push(Frame { width: n, height: n, rgb });
    }
    frames
}

/// A Rayleigh draw with scale σ (speckle amplitude statistics), normalised to mean 1.
fn rayleigh(rng: &mut StdRng, sigma: f64) -> f64 {
    let u: f64 = rng.random_range(1e-9..1.0);
    sigma * (-2.0 * u.ln()).sqrt() / (sigma * (std::f64::consts::PI / 2.0).sqrt())
}

/// ECG strip along the bottom: a QRS spike at each end-diastole, a sweeping cursor.
fn draw_ecg(rgb: &mut [u8], n: usize, scene: &Scene, phase0: f64, t: usize) {
    let base = (n as f64 * 0.93) as usize;
    let amp = (n as f64 * 0.05).max(2.0);
    let total = scene.frames.max(1) as f64;
    let beats = scene.heart_rate / 60.0 / scene.fps;
    let mut prev: Option<usize> = None;
    for x in 0..n {
        let time = x as f64 / n as f64 * total;
        let ph = (phase0 + time * beats).fract();
        let spike = (-((ph.min(1.0 - ph)) / 0.03).powi(2)).exp();
        let twave = 0.25 * (-((ph - 0.3) / 0.06).powi(2)).exp();
        let y = (base as f64 - amp * (spike + twave)).round().clamp(0.0, n as f64 - 1.0) as usize;
        let (lo, hi) = prev.map_or((y, y), |p| (p.min(y), p.max(y)));
        for yy in lo..=hi {
            put(rgb, n, x, yy, [40, 220, 60]);
        }
        prev = Some(y);
    }
    let cx = ((t as f64 / total) * n as f64) as usize;
    for yy in base.saturating_sub(amp as usize + 2)..(base + 2).min(n) {
        put(rgb, n, cx.min(n - 1), yy, [230, 230, 60]);
    }
}

fn put(rgb: &mut [u8], n: usize, x: usize, y: usize, c: [u8; 3]) {
    if x < n && y < n {
        rgb[(y * n + x) * 3..(y * n + x) * 3 + 3].copy_from_slice(&c);
    }
}

/// 3×5 glyphs, one row per byte (bit 2 = left column).
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [6, 1, 2, 4, 7],
        '3' => [6, 1, 2, 1, 6],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 6, 1, 6],
        '6' => [3, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 6],
        ':' => [0, 2, 0, 2, 0],
        '-' => [0, 0, 7, 0, 0],
        '.' => [0, 0, 0, 0, 2],
        _ => [0; 5],
    }
}

/// Burned-in text, 4 pixels per character.
pub fn draw_text(rgb: &mut [u8], n: usize, x0: usize, y0: usize, text: &str, colour: [u8; 3]) {
    for (i, ch) in text.chars().enumerate() {
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    put(rgb, n, x0 + i * 4 + col, y0 + row, colour);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scene(ef: f64) -> Scene {
        let mut rng = StdRng::seed_from_u64(1);
        Scene {
            anatomy: Anatomy::random(&mut rng),
            ef,
            heart_rate: 60.0,
            devices: Devices::default(),
            size: 96,
            frames: 30,
            fps: 30.0,
            seed: 5,
        }
    }

    /// Blood pixels in the box where the LV lies: inside the sector, dark after 3×3 smoothing
    /// (speckle makes single tissue pixels dark too).
    fn lv_dark(f: &Frame) -> usize {
        let n = f.width;
        let mut count = 0;
        for y in n * 8 / 100..n * 64 / 100 {
            for x in n / 2..n * 8 / 10 {
                let p = ((x as f64 + 0.5) / n as f64, (y as f64 + 0.5) / n as f64);
                let (dx, dy) = (p.0 - APEX.0, p.1 - APEX.1);
                if (dx * dx + dy * dy).sqrt() > SECTOR_RADIUS - 0.02 || dx.atan2(dy).abs() > SECTOR_HALF_ANGLE - 0.02 {
                    continue;
                }
                let mean: u32 =
                    (y - 1..=y + 1).flat_map(|yy| (x - 1..=x + 1).map(move |xx| u32::from(f.rgb[(yy * n + xx) * 3]))).sum::<u32>() / 9;
                if mean < 24 {
                    count += 1;
                }
            }
        }
        count
    }

    #[test]
    fn the_cavity_shrinks_by_the_ejection_fraction() {
        for ef in [25.0, 60.0] {
            let frames = render(&scene(ef));
            let areas: Vec<usize> = frames.iter().map(lv_dark).collect();
            let (min, max) = (*areas.iter().min().unwrap() as f64, *areas.iter().max().unwrap() as f64);
            // Area ∝ s², volume ∝ s³: the area ratio is (1 − EF)^(2/3), blurred by noise and walls.
            let want = (1.0 - ef / 100.0).powf(2.0 / 3.0);
            assert!((min / max - want).abs() < 0.12, "EF {ef}: area ratio {} vs {want}", min / max);
        }
    }

    #[test]
    fn devices_add_bright_pixels_and_seeds_repeat() {
        let mut s = scene(50.0);
        let plain = render(&s);
        assert_eq!(plain, render(&s), "same scene, same pixels");
        s.devices.pacemaker = true;
        let lead = render(&s);
        let bright = |f: &Frame| f.rgb.chunks(3).filter(|p| p[0] > 235 && p[1] > 235 && p[2] > 235).count();
        assert!(bright(&lead[0]) > bright(&plain[0]) + 10);
    }
}
