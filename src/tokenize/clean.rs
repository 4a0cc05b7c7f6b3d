//! open_clip's text cleaning before CLIP BPE (`tokenizer.py`: `basic_clean` = `ftfy.fix_text`
//! then `html.unescape` twice; then whitespace collapse and lower-casing, which the
//! `tokenizer.json` normaliser does). The parts of ftfy's default fixes that change report text
//! are reproduced: curly quotes, Latin ligatures, full-width characters, line breaks and
//! control characters. Mojibake repair (ftfy's `fix_encoding`) is not: reports arriving here are
//! already decoded UTF-8.

/// Applies ftfy-equivalent fixes, then HTML unescaping twice.
pub fn basic_clean(text: &str) -> String {
    let fixed = ftfy_subset(text);
    let once = html_unescape(&fixed);
    html_unescape(&once).trim().to_owned()
}

fn ftfy_subset(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{02bc}' | '\u{2018}'..='\u{201b}' => out.push('\''),
            '\u{201c}'..='\u{201f}' => out.push('"'),
            '\u{fb00}' => out.push_str("ff"),
            '\u{fb01}' => out.push_str("fi"),
            '\u{fb02}' => out.push_str("fl"),
            '\u{fb03}' => out.push_str("ffi"),
            '\u{fb04}' => out.push_str("ffl"),
            '\u{fb05}' => out.push_str("\u{017f}t"),
            '\u{fb06}' => out.push_str("st"),
            '\u{0132}' => out.push_str("IJ"),
            '\u{0133}' => out.push_str("ij"),
            '\u{ff01}'..='\u{ff5e}' => out.push(char::from_u32(c as u32 - 0xff01 + 0x21).unwrap_or(c)),
            '\u{3000}' => out.push(' '),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\u{2028}' | '\u{2029}' | '\u{0085}' => out.push('\n'),
            '\u{0000}'..='\u{0008}' | '\u{000b}' | '\u{000e}'..='\u{001f}' | '\u{007f}' | '\u{feff}' => {}
            _ => out.push(c),
        }
    }
    out
}

/// Python's `html.unescape` for numeric references and the named entities report text uses.
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    // (name, text, legacy): legacy entities are also recognised without the `;` (HTML5).
    const NAMED: [(&str, &str, bool); 20] = [
        ("amp", "&", true),
        ("AMP", "&", true),
        ("lt", "<", true),
        ("LT", "<", true),
        ("gt", ">", true),
        ("GT", ">", true),
        ("quot", "\"", true),
        ("QUOT", "\"", true),
        ("apos", "'", false),
        ("nbsp", "\u{a0}", true),
        ("deg", "°", true),
        ("micro", "µ", true),
        ("plusmn", "±", true),
        ("times", "×", true),
        ("eacute", "é", true),
        ("ge", "≥", false),
        ("le", "≤", false),
        ("ndash", "–", false),
        ("mdash", "—", false),
        ("hellip", "…", false),
    ];
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        // Longest name first, as Python matches the longest known prefix.
        let named = NAMED
            .iter()
            .filter_map(|(n, ch, legacy)| {
                let semi = tail.strip_prefix(n).is_some_and(|r| r.starts_with(';'));
                (semi || (*legacy && tail.starts_with(n))).then_some((n.len() + usize::from(semi), *ch))
            })
            .max_by_key(|(len, _)| *len);
        if let Some((len, ch)) = named {
            out.push_str(ch);
            rest = &tail[len..];
            continue;
        }
        if let Some(num) = tail.strip_prefix('#') {
            let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
                Some(h) => (h.chars().take_while(char::is_ascii_hexdigit).collect::<String>(), 16, 2),
                None => (num.chars().take_while(char::is_ascii_digit).collect::<String>(), 10, 1),
            };
            if !digits.is_empty() {
                if let Some(c) = u32::from_str_radix(&digits, radix).ok().and_then(char::from_u32) {
                    out.push(c);
                    let mut consumed = skip + digits.len();
                    if tail[consumed..].starts_with(';') {
                        consumed += 1;
                    }
                    rest = &tail[consumed..];
                    continue;
                }
            }
        }
        out.push('&');
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixes_what_ftfy_and_html_unescape_fix() {
        assert_eq!(
            basic_clean("  \u{201c}Normal\u{201d} LV\u{2019}s size &amp;amp; function \u{fb01}ne  "),
            "\"Normal\" LV's size & function fine"
        );
        assert_eq!(basic_clean("EF &#8805; 55&#x25; at 37&deg;C"), "EF ≥ 55% at 37°C");
        assert_eq!(basic_clean("\u{ff25}\u{ff26} 60"), "EF 60");
        assert_eq!(basic_clean("a &unknown; b & c"), "a &unknown; b & c");
        assert_eq!(basic_clean("A &AMP; B &amp C &ge D"), "A & B & C &ge D");
    }
}
