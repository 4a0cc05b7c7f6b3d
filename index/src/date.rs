//! [`StudyDate`]: the one date type of echovault — a validated calendar day, compared as a date,
//! written as `YYYY-MM-DD` everywhere (CLI, JSON, the stored records).
//!
//! Stored records keep the date as that string (serde), so an `ItemRecord` encodes byte for
//! byte as it did when the field was an `Option<String>`. Records written before dates were
//! validated may hold text that is no day: [`lenient`] reads those as undated instead of
//! failing the whole record.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use time::{Date, Month};

/// A calendar day (proleptic Gregorian), years 1 to 9999.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StudyDate(Date);

/// Text that is not a day, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a date: {reason}")]
pub struct DateError {
    /// The text given.
    pub text: String,
    /// What is wrong with it (e.g. "February 2021 has 28 days").
    pub reason: String,
}

/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

impl StudyDate {
    /// The day `year`-`month`-`day`, or why there is none.
    pub fn new(year: i32, month: u8, day: u8) -> Result<StudyDate, DateError> {
        let text = format!("{year:04}-{month:02}-{day:02}");
        Self::checked(year, month, day).map_err(|reason| DateError { text, reason })
    }

    fn checked(year: i32, month: u8, day: u8) -> Result<StudyDate, String> {
        if !(1..=9999).contains(&year) {
            return Err(format!("year {year} is outside 1 to 9999"));
        }
        let m = Month::try_from(month).map_err(|_| format!("there is no month {month} (months are 01 to 12)"))?;
        let days = m.length(year);
        if day == 0 || day > days {
            return Err(format!("{m} {year} has {days} days"));
        }
        Date::from_calendar_date(year, m, day).map(StudyDate).map_err(|e| e.to_string())
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.0.year()
    }

    /// The month, 1 to 12.
    pub fn month(self) -> u8 {
        u8::from(self.0.month())
    }

    /// The day of the month, 1 to 31.
    pub fn day(self) -> u8 {
        self.0.day()
    }

    /// Days since 1970-01-01 (negative before it).
    pub fn days_since_epoch(self) -> i64 {
        i64::from(self.0.to_julian_day() - UNIX_EPOCH_JULIAN_DAY)
    }

    /// Inverse of [`StudyDate::days_since_epoch`]; `None` outside years 1 to 9999.
    pub fn from_days_since_epoch(days: i64) -> Option<StudyDate> {
        let jd = i32::try_from(days.checked_add(i64::from(UNIX_EPOCH_JULIAN_DAY))?).ok()?;
        let d = Date::from_julian_day(jd).ok()?;
        (1..=9999).contains(&d.year()).then_some(StudyDate(d))
    }

    /// 4-byte big-endian key form: byte order is date order (index keys).
    pub(crate) fn key(self) -> [u8; 4] {
        // Julian day numbers of years 1 to 9999 are positive.
        (self.0.to_julian_day() as u32).to_be_bytes()
    }

    /// Inverse of [`StudyDate::key`].
    pub(crate) fn from_key(b: [u8; 4]) -> Option<StudyDate> {
        let jd = i32::try_from(u32::from_be_bytes(b)).ok()?;
        Date::from_julian_day(jd).ok().filter(|d| (1..=9999).contains(&d.year())).map(StudyDate)
    }
}

impl fmt::Display for StudyDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year(), self.month(), self.day())
    }
}

impl std::str::FromStr for StudyDate {
    type Err = DateError;

    /// `YYYY-MM-DD`, or DICOM's `YYYYMMDD`; surrounding blanks are ignored.
    fn from_str(s: &str) -> Result<StudyDate, DateError> {
        let t = s.trim();
        let err = |reason: String| DateError { text: t.to_owned(), reason };
        // Slicing below is by byte: non-ASCII text (e.g. "1 févr.") is refused first.
        if !t.is_ascii() {
            return Err(err("give a day as YYYY-MM-DD (digits only)".into()));
        }
        let b = t.as_bytes();
        let (y, m, d) = match b.len() {
            10 if b[4] == b'-' && b[7] == b'-' => (&t[..4], &t[5..7], &t[8..]),
            8 => (&t[..4], &t[4..6], &t[6..]),
            _ => return Err(err("give a day as YYYY-MM-DD".into())),
        };
        if ![y, m, d].iter().all(|p| p.bytes().all(|c| c.is_ascii_digit())) {
            return Err(err("give a day as YYYY-MM-DD (digits only)".into()));
        }
        let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i32>(), m.parse::<u8>(), d.parse::<u8>()) else {
            return Err(err("give a day as YYYY-MM-DD".into()));
        };
        Self::checked(y, m, d).map_err(err)
    }
}

impl Serialize for StudyDate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StudyDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StudyDate, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Deserialises an optional date written as text, reading text that is no day as `None`
/// (logged at debug level, without the record's other fields): indexes written before dates
/// were validated may hold such text, and one bad date must not make the record unreadable.
pub fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StudyDate>, D::Error> {
    let Some(s) = Option::<String>::deserialize(d)? else { return Ok(None) };
    match s.parse() {
        Ok(date) => Ok(Some(date)),
        Err(e) => {
            tracing::debug!(error = %e, "stored record's date is not a day; read as undated");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_both_forms_and_prints_one() {
        let d: StudyDate = "2024-02-29".parse().unwrap();
        assert_eq!((d.year(), d.month(), d.day()), (2024, 2, 29));
        assert_eq!(d.to_string(), "2024-02-29");
        assert_eq!("20240229".parse::<StudyDate>().unwrap(), d);
        assert_eq!(" 2024-02-29\n".parse::<StudyDate>().unwrap(), d);
    }

    #[test]
    fn refuses_days_that_do_not_exist_and_says_why() {
        let e = "2021-02-31".parse::<StudyDate>().unwrap_err();
        assert_eq!(e.to_string(), "'2021-02-31' is not a date: February 2021 has 28 days");
        let e = "2024-13-01".parse::<StudyDate>().unwrap_err();
        assert!(e.reason.contains("no month 13"), "{e}");
        let e = "1900-02-29".parse::<StudyDate>().unwrap_err();
        assert!(e.reason.contains("February 1900 has 28 days"), "{e}");
        for bad in [
            "",
            "2021-1-01",
            "2021/01/01",
            "yesterday",
            "2021-01-0a",
            "+021-01-01",
            "0000-01-01",
            "2021-04-31",
            "123é567",
            "1 févr.",
            "2021-01-0\u{e9}",
        ] {
            assert!(bad.parse::<StudyDate>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn epoch_days_match_known_values() {
        // Independent values: `date -d 2000-03-01 +%s` / 86400 = 11017; 1970-01-01 = 0.
        assert_eq!("1970-01-01".parse::<StudyDate>().unwrap().days_since_epoch(), 0);
        assert_eq!("2000-03-01".parse::<StudyDate>().unwrap().days_since_epoch(), 11017);
        assert_eq!("1969-12-31".parse::<StudyDate>().unwrap().days_since_epoch(), -1);
    }

    #[test]
    fn serde_form_is_the_old_string_form() {
        #[derive(Serialize, Deserialize)]
        struct Old(Option<String>);
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct New(#[serde(deserialize_with = "lenient")] Option<StudyDate>);
        let cfg = bincode::config::standard();
        let old = bincode::serde::encode_to_vec(Old(Some("2021-03-04".into())), cfg).unwrap();
        let new = bincode::serde::encode_to_vec(New(Some("2021-03-04".parse().unwrap())), cfg).unwrap();
        assert_eq!(old, new);
        let garbled = bincode::serde::encode_to_vec(Old(Some("2021-02-31".into())), cfg).unwrap();
        let (back, _): (New, _) = bincode::serde::decode_from_slice(&garbled, cfg).unwrap();
        assert_eq!(back, New(None));
        assert_eq!(serde_json::to_string(&"2021-03-04".parse::<StudyDate>().unwrap()).unwrap(), "\"2021-03-04\"");
        assert!(serde_json::from_str::<StudyDate>("\"2021-02-30\"").is_err());
    }

    proptest! {
        #[test]
        fn order_text_days_and_keys_agree(a in 1i64..3_000_000, b in 1i64..3_000_000) {
            let base = StudyDate::new(1, 1, 1).unwrap().days_since_epoch();
            let (da, db) = (StudyDate::from_days_since_epoch(base + a).unwrap(), StudyDate::from_days_since_epoch(base + b).unwrap());
            prop_assert_eq!(da.cmp(&db), a.cmp(&b));
            prop_assert_eq!(da.to_string().cmp(&db.to_string()), a.cmp(&b));
            prop_assert_eq!(da.key().cmp(&db.key()), a.cmp(&b));
            prop_assert_eq!(StudyDate::from_key(da.key()), Some(da));
            prop_assert_eq!(da.to_string().parse::<StudyDate>().unwrap(), da);
            prop_assert_eq!(da.days_since_epoch(), base + a);
        }
    }
}
