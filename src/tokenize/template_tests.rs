//! Spec tests of the template tokenizer: every expected id below was derived by hand from the
//! specification in `template.rs`'s header (issue "EchoCLIP-R as published"), not from running
//! the code. The vocabulary is our own.
//!
//! Test vocabulary (line → id):
//! ```text
//!  1 "NORMAL LEFT VENTRICULAR SIZE. "                      5
//!  2 "LV EJECTION FRACTION IS <#>%. "                      6   (1 slot)
//!  3 "<#> MITRAL REGURGITATION. "                          7   (1 slot)
//!  4 "ESTIMATED PA SYSTOLIC PRESSURE IS <#>MMHG. "         8   (1 slot)
//!  5 "AORTIC ROOT <#>CM. "                                 9   (1 slot)
//!  6 "<#> TO <#> TRICUSPID REGURGITATION. "                10  (2 slots)
//!  7 "NORMAL LEFT VENTRICULAR SIZE. "                      —   (repeats line 1)
//!  8 "[UNK]"                                               —   (a special)
//!  9 "NORMAL "                                             11
//! 10 "THE INFERIOR VENA CAVA SHOWS … PRESSURE (<#>MMHG). " 12  (1 slot)
//! 11 "RESTING SEGMENTAL WALL MOTION ANALYSIS. "            13
//! 12 "SHORTNESS BREATH. "                                  14
//! 13 ""                                                    —   (empty)
//! 14 "MEASURED ON <#> "                                    15  (1 slot)
//! 15 "THE AORTIC VALVE AREA IS <#>CM<#> "                  16  (2 slots)
//! ```
//! So T = 5 + 12 = 17, start = 17 + 132 = 149, end = 150. Value ids (+ T = 17): `[UNK]` 17;
//! integer n (0–100) 22 + n; `‡` 123; MILD 124, MODERATE 125, SEVERE 126, MILD/MODERATE 127,
//! MODERATE/SEVERE 128; `.d` 129 + d; `0d` 139 + d.

use super::*;
use crate::tokenize::clean_report;

const IVC: &str = "THE INFERIOR VENA CAVA SHOWS A NORMAL RESPIRATORY COLLAPSE CONSISTENT WITH NORMAL RIGHT ATRIAL PRESSURE (<#>MMHG). ";

fn lines() -> Vec<String> {
    [
        "NORMAL LEFT VENTRICULAR SIZE. ",
        "LV EJECTION FRACTION IS <#>%. ",
        "<#> MITRAL REGURGITATION. ",
        "ESTIMATED PA SYSTOLIC PRESSURE IS <#>MMHG. ",
        "AORTIC ROOT <#>CM. ",
        "<#> TO <#> TRICUSPID REGURGITATION. ",
        "NORMAL LEFT VENTRICULAR SIZE. ",
        "[UNK]",
        "NORMAL ",
        IVC,
        "RESTING SEGMENTAL WALL MOTION ANALYSIS. ",
        "SHORTNESS BREATH. ",
        "",
        "MEASURED ON <#> ",
        "THE AORTIC VALVE AREA IS <#>CM<#> ",
    ]
    .map(String::from)
    .to_vec()
}

fn tok() -> TemplateTokenizer {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vocab.txt");
    std::fs::write(&p, lines().join("\n") + "\n").unwrap();
    TemplateTokenizer::load(&p, 77).unwrap()
}

/// The framed ids up to and including the end id (the rest must be padding).
fn ids(text: &str) -> Vec<i64> {
    let all = tok().encode(text).unwrap();
    assert_eq!(all.len(), 77);
    let end = all.iter().position(|&i| i == 150).expect("end id");
    assert!(all[end + 1..].iter().all(|&i| i == 0), "zero padding after the end id: {all:?}");
    all[..=end].to_vec()
}

#[test]
fn ids_of_the_vocabulary() {
    let t = tok();
    assert_eq!(t.phrase_vocab(), 17, "5 specials + 12 distinct non-empty lines");
    assert_eq!((t.start_id(), t.end_id(), t.vocab_size()), (149, 150, 151));
    // Line 9 ("NORMAL ") follows a repeated line and a special: it gets the next free id, 11.
    assert_eq!(ids("Normal mitral valve."), [149, 11, 150]);
}

#[test]
fn published_size_vocabulary_has_start_907_and_end_908() {
    let lines: Vec<String> = (0..770).map(|i| format!("PHRASE NUMBER {i} ")).collect();
    let t = TemplateTokenizer::from_lines(Path::new("v.txt"), &lines, 77).unwrap();
    assert_eq!((t.phrase_vocab(), t.start_id(), t.end_id()), (775, 907, 908));
}

#[test]
fn crlf_and_lf_vocabularies_are_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("crlf.txt");
    std::fs::write(&p, lines().join("\r\n")).unwrap();
    let crlf = TemplateTokenizer::load(&p, 77).unwrap();
    let text = "LV ejection fraction is 55%. Normal left ventricular size.";
    assert_eq!(crlf.encode(text).unwrap(), tok().encode(text).unwrap());
    assert_eq!(crlf.phrase_vocab(), 17);
}

#[test]
fn trailing_spaces_are_part_of_a_phrase() {
    // Without its trailing space "NORMAL" would also match inside "NORMALITY"; with it, a
    // phrase only matches before a space.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.txt");
    std::fs::write(&p, "NORMAL \nLV EJECTION FRACTION IS <#>%. \n").unwrap();
    let t = TemplateTokenizer::load(&p, 77).unwrap();
    // T = 7, start 139, end 140.
    assert_eq!(&t.encode("normality normal").unwrap()[..3], &[139, 5, 140]);
}

#[test]
fn a_whole_phrase() {
    // Cleaned to "NORMAL LEFT VENTRICULAR SIZE. "; the longest match (line 1) beats "NORMAL ".
    assert_eq!(ids("Normal left ventricular size."), [149, 5, 150]);
}

#[test]
fn a_phrase_with_a_value() {
    // "LV EJECTION FRACTION IS 55 %." → " %" joins its number → "…IS 55%. "; 55 → 22 + 55.
    assert_eq!(ids("LV ejection fraction is 55 %."), [149, 6, 77, 150]);
}

#[test]
fn a_period_is_added_after_a_listed_phrase() {
    // "LV EJECTION FRACTION IS 55%" is on the list and not followed by a period: one is added.
    assert_eq!(ids("LV ejection fraction is 55%"), [149, 6, 77, 150]);
    assert_eq!(clean_report("LV ejection fraction is 55%"), "LV EJECTION FRACTION IS 55%. ");
    // Already followed by a period: none added (no "..").
    assert_eq!(clean_report("LV ejection fraction is 55%."), "LV EJECTION FRACTION IS 55%. ");
}

#[test]
fn three_digit_numbers_split_greedily() {
    // 150 → "15" (37), "0" (22); units lose their space: "150 MMHG" → "150MMHG".
    assert_eq!(ids("Estimated PA systolic pressure is 150 mmHg."), [149, 8, 37, 22, 150]);
    // 101 → "10" (32), "1" (23): "100" is not a prefix of "101".
    assert_eq!(ids("LV ejection fraction is 101%."), [149, 6, 32, 23, 150]);
    // 100 is one value.
    assert_eq!(ids("LV ejection fraction is 100%."), [149, 6, 122, 150]);
}

#[test]
fn pulmonary_artery_becomes_pa_and_gets_its_period() {
    assert_eq!(clean_report("Estimated pulmonary artery systolic pressure is 35 mmHg"), "ESTIMATED PA SYSTOLIC PRESSURE IS 35MMHG. ");
    assert_eq!(ids("Estimated pulmonary artery systolic pressure is 35 mmHg"), [149, 8, 57, 150]);
}

#[test]
fn decimals_split_into_integer_and_tenths() {
    // 3.5 → "3" (25), ".5" (134).
    assert_eq!(ids("Aortic root 3.5 cm."), [149, 9, 25, 134, 150]);
    // 37.5 → "37" (59), ".5" (134).
    assert_eq!(ids("LV ejection fraction is 37.5%."), [149, 6, 59, 134, 150]);
    // 37.55 → "37", ".5", "5" (27).
    assert_eq!(ids("LV ejection fraction is 37.55%."), [149, 6, 59, 134, 27, 150]);
}

#[test]
fn four_digit_numbers_use_the_leading_zero_values() {
    // 2005 → "20" (42), "05" (144).
    assert_eq!(ids("Aortic root 2005 cm."), [149, 9, 42, 144, 150]);
    // 1001 → "100" (122), "1" (23): leftmost-longest, not "10","01".
    assert_eq!(ids("Aortic root 1001 cm."), [149, 9, 122, 23, 150]);
}

#[test]
fn a_number_before_the_final_period_takes_the_period_along() {
    // "2005." stays joined (the period follows a digit and ends the text), so the variable is
    // "2005." and the text "MEASURED ON <#> "; its value is "20", "05" and an unknown "." (17).
    assert_eq!(clean_report("Measured on 2005."), "MEASURED ON 2005. ");
    assert_eq!(ids("Measured on 2005."), [149, 15, 42, 144, 17, 150]);
}

#[test]
fn two_slots_are_joined_with_the_separator() {
    // MILD ‡ MODERATE → 124, 123, 125.
    assert_eq!(ids("Mild to moderate tricuspid regurgitation."), [149, 10, 124, 123, 125, 150]);
    // Numbers too: "12‡45".
    assert_eq!(ids("12 to 45 tricuspid regurgitation."), [149, 10, 34, 123, 67, 150]);
}

#[test]
fn compound_severities_are_one_value() {
    assert_eq!(ids("Mild/moderate mitral regurgitation."), [149, 7, 127, 150]);
    assert_eq!(ids("Moderate/severe mitral regurgitation."), [149, 7, 128, 150]);
    assert_eq!(ids("Severe mitral regurgitation."), [149, 7, 126, 150]);
}

#[test]
fn very_severe_is_an_unknown_and_severe() {
    // "VERY SEVERE" is one variable; the value tokenizer knows "SEVERE" only: [UNK] (17), 126.
    assert_eq!(ids("Very severe mitral regurgitation."), [149, 7, 17, 126, 150]);
}

#[test]
fn adverbs_become_adjectives() {
    // SEVERELY → SEVERE before extraction.
    assert_eq!(ids("Severely mitral regurgitation."), [149, 7, 126, 150]);
    assert_eq!(clean_report("normally mildly moderately severely"), "NORMAL MILD MODERATE SEVERE ");
}

#[test]
fn a_severity_after_a_letter_is_not_a_variable() {
    // "AMILD": MILD follows a letter, so no <#>; the first sentence is one unknown stretch.
    assert_eq!(extract_variables("AMILD MITRAL. MILD X").0, vec!["MILD".to_owned()]);
    assert_eq!(ids("Amild mitral regurgitation. Normal left ventricular size."), [149, 5, 150]);
}

#[test]
fn an_unknown_stretch_swallows_its_variables() {
    // "TRACE <#> FINDINGS. " is unknown and holds the 12: the EF phrase gets 40 (62), not 12.
    assert_eq!(ids("Trace 12 findings. LV ejection fraction is 40%."), [149, 6, 62, 150]);
}

#[test]
fn several_phrases_keep_their_own_values() {
    // MILD (124); 35 (57); 3.2 → "3" (25), ".2" (131).
    assert_eq!(ids("Mild mitral regurgitation. LV ejection fraction is 35%. Aortic root 3.2 cm."), [149, 7, 124, 6, 57, 9, 25, 131, 150]);
}

#[test]
fn units_with_digits_hold_a_variable_too() {
    // "1.2 CM2." → "1.2CM2. ": variables "1.2" and "2." → "1" (23) ".2" (131) ‡ (123) "2" (24)
    // then the unknown "." (17).
    assert_eq!(ids("The aortic valve area is 1.2 cm2."), [149, 16, 23, 131, 123, 24, 17, 150]);
}

#[test]
fn was_and_were_are_rewritten_as_whole_words() {
    assert_eq!(ids("LV ejection fraction was 45%."), [149, 6, 67, 150]);
    assert_eq!(clean_report("was washed"), "IS WASHED ");
    assert_eq!(clean_report("Valves were normal and/or thin"), "VALVES ARE NORMAL AND THIN ");
    assert_eq!(clean_report("wereabouts and/orange"), "WEREABOUTS AND/ORANGE ");
}

#[test]
fn dates_are_deleted() {
    assert_eq!(clean_report("Study 01/02/2020 and 03.04.2021 done"), "STUDY AND DONE ");
}

#[test]
fn icd_codes_are_deleted() {
    assert_eq!(clean_report("Dx I50.9 heart failure, unspecified"), "DX HEART FAILURE, UNSPECIFIED. ");
}

#[test]
fn removables_backticks_and_brackets() {
    assert_eq!(clean_report("pt`s [EF] ^55‡ CRLFok"), "PT'S EF 55 OK ");
}

#[test]
fn periods_get_a_space_unless_between_digits() {
    assert_eq!(clean_report("size.Normal 2.5"), "SIZE. NORMAL 2.5 ");
    assert_eq!(clean_report("size . normal"), "SIZE. NORMAL ");
    assert_eq!(clean_report("size... normal"), "SIZE. NORMAL ");
}

#[test]
fn units_join_their_numbers() {
    assert_eq!(clean_report("IVC 21 mm, RA 8 mmHg, EF 60 %, root 3 cm"), "IVC 21MM, RA 8MMHG, EF 60%, ROOT 3CM ");
}

#[test]
fn plus_cvp_becomes_mmhg() {
    assert_eq!(clean_report("RA 5 + CVP mmHg"), "RA 5MMHG ");
}

#[test]
fn whitespace_runs_collapse_and_the_text_ends_with_one_space() {
    assert_eq!(clean_report("  normal \t\n left  "), "NORMAL LEFT ");
}

#[test]
fn resting_wall_motion_analysis_colon_is_rewritten() {
    // A period is added after ANALYSIS (followed by ':'), then "ANALYSIS.:" → "ANALYSIS.".
    assert_eq!(ids("Resting segmental wall motion analysis: normal"), [149, 13, 11, 150]);
}

#[test]
fn the_inferior_vena_cava_sentence_is_rewritten() {
    let report = "The inferior vena cava is normal in size and shows a normal respiratory collapse, consistent with normal right atrial pressure (3 mmHg).";
    assert_eq!(ids(report), [149, 12, 25, 150]);
}

#[test]
fn shortness_breath_gets_its_period() {
    assert_eq!(ids("Shortness breath"), [149, 14, 150]);
}

#[test]
fn one_character_texts_are_not_cleaned() {
    assert_eq!(clean_report("a"), "a");
    // "5" → "<#>", an unknown stretch that swallows the 5.
    assert_eq!(ids("5"), [149, 150]);
    assert_eq!(ids(""), [149, 150]);
}

#[test]
fn long_reports_are_truncated_with_the_end_id_last() {
    let t = tok();
    for n in [75, 76, 100] {
        let report = "Normal left ventricular size. ".repeat(n);
        let got = t.encode(&report).unwrap();
        let mut want = vec![149];
        want.extend(std::iter::repeat_n(5, 75));
        want.push(150);
        assert_eq!(got, want, "{n} phrases");
    }
    // 74 phrases: 76 ids, then one pad.
    let got = t.encode(&"Normal left ventricular size. ".repeat(74)).unwrap();
    assert_eq!((got[75], got[76]), (150, 0));
}

#[test]
fn a_literal_placeholder_is_an_error_not_a_panic() {
    let err = tok().encode("LV ejection fraction is <#>%.").unwrap_err().to_string();
    assert!(err.contains("<#>"), "{err}");
}

#[test]
fn describe_names_phrases_and_values() {
    let t = tok();
    let ids = t.encode("Mild to moderate tricuspid regurgitation.").unwrap();
    assert_eq!(t.describe(&ids[..6]), ["[START]", "<#> TO <#> TRICUSPID REGURGITATION. ", "<MILD>", "<‡>", "<MODERATE>", "[END]"]);
}
