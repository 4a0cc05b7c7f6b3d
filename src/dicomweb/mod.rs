//! DICOMweb sources (`dicomweb:http://host:8042/dicom-web`): a client of an archive's QIDO-RS
//! (search) and WADO-RS (retrieve) services, as Orthanc, dcm4chee and the cloud healthcare APIs
//! offer them (DICOM PS3.18).
//!
//! - [`Endpoint`]: the `dicomweb:URL` source and the URLs of its resources.
//! - [`Credentials`] (`auth.rs`): basic or bearer, from the environment only.
//! - [`Client`] (`client.rs`): requests with timeouts and retries with backoff.
//! - `qido.rs`: studies (`ModalitiesInStudy`, `StudyDate` range), their series and instances,
//!   paged with `limit`/`offset`; [`Walk`] goes through them all lazily.
//! - `multipart.rs`: the `multipart/related` envelope of WADO-RS, read part by part.
//! - `fetch.rs`: [`Client::retrieve`] one instance; [`Client::fetch`] many on `workers` threads,
//!   at most `workers` instances in memory at once.
//!
//! Every failure is a [`DicomWebError`] naming the Study / Series / SOP Instance UIDs concerned,
//! the URL and the HTTP status when there was one.

mod auth;
mod client;
mod error;
mod fetch;
pub mod multipart;
mod qido;

pub use auth::{Credentials, PASSWORD_VAR, TOKEN_VAR, USER_VAR};
pub use client::{Client, ClientOptions, RetryPolicy};
pub use error::{DicomWebError, Target};
pub use fetch::{Fetch, FetchedInstance};
pub use qido::{InstanceRef, SeriesRef, StudyQuery, StudyRef, Walk};

/// What marks an input as a DICOMweb source rather than a path.
pub const PREFIX: &str = "dicomweb:";

/// Whether an input names a DICOMweb source (`dicomweb:URL`).
pub fn is_dicomweb(input: &str) -> bool {
    input.starts_with(PREFIX)
}

/// The base URL of a DICOMweb service (the part before `/studies`), without a trailing `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    base: String,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", self.base)
    }
}

impl std::str::FromStr for Endpoint {
    type Err = DicomWebError;

    /// Parses `dicomweb:http(s)://host[:port]/path`. Credentials in the URL are refused (they
    /// would show in `ps`, logs and errors): they come from the environment.
    fn from_str(source: &str) -> Result<Endpoint, DicomWebError> {
        let url = source.strip_prefix(PREFIX).unwrap_or(source);
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((_, host)) = authority.rsplit_once('@') {
            // The text shown leaves the user and password out.
            let shown = format!("{PREFIX}{scheme}://…@{host}{}", &rest[authority.len()..]);
            return Err(DicomWebError::Source {
                source_text: shown,
                reason: format!("credentials in the URL are refused: set {USER_VAR} and {PASSWORD_VAR}, or {TOKEN_VAR}"),
            });
        }
        let bad = |reason: &str| DicomWebError::Source { source_text: source.to_owned(), reason: reason.to_owned() };
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(bad(
                "expected dicomweb:http://HOST[:PORT]/PATH or dicomweb:https://…, e.g. dicomweb:http://127.0.0.1:8042/dicom-web",
            ));
        }
        if authority.is_empty() {
            return Err(bad("the URL has no host"));
        }
        if rest.contains(['?', '#']) {
            return Err(bad("the base URL takes no query or fragment"));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("the URL holds spaces or control characters"));
        }
        Ok(Endpoint { base: url.trim_end_matches('/').to_owned() })
    }
}

impl Endpoint {
    /// The base URL (`http://host:8042/dicom-web`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// QIDO-RS: all studies.
    pub fn studies_url(&self) -> String {
        format!("{}/studies", self.base)
    }

    /// One study (its WADO-RS URL; a run's failure to list it is keyed by it).
    pub fn study_url(&self, study: &str) -> String {
        format!("{}/studies/{study}", self.base)
    }

    /// QIDO-RS: the series of a study.
    pub fn series_url(&self, study: &str) -> String {
        format!("{}/studies/{study}/series", self.base)
    }

    /// QIDO-RS: the instances of a study (all its series).
    pub fn study_instances_url(&self, study: &str) -> String {
        format!("{}/studies/{study}/instances", self.base)
    }

    /// QIDO-RS: the instances of a series.
    pub fn instances_url(&self, study: &str, series: &str) -> String {
        format!("{}/studies/{study}/series/{series}/instances", self.base)
    }

    /// WADO-RS: one instance (what a DICOM viewer opens).
    pub fn instance_url(&self, study: &str, series: &str, sop: &str) -> String {
        format!("{}/studies/{study}/series/{series}/instances/{sop}", self.base)
    }
}

/// Whether a UID from a server can go into a URL path: 1 to 64 characters, digits and dots as
/// DICOM specifies (letters, `-` and `_` of archives that do not follow it are let through; what
/// could leave the path segment is not).
pub(crate) fn check_uid(uid: &str) -> Result<(), String> {
    if uid.is_empty() || uid.len() > 64 {
        return Err(format!("UID '{uid}' is not 1 to 64 characters"));
    }
    if !uid.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
        return Err(format!("UID '{}' holds characters a UID cannot", uid.escape_debug()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_to_a_base_url_and_credentials_in_urls_are_refused() {
        let e: Endpoint = "dicomweb:http://127.0.0.1:8042/dicom-web/".parse().unwrap();
        assert_eq!(e.base(), "http://127.0.0.1:8042/dicom-web");
        assert_eq!(e.to_string(), "dicomweb:http://127.0.0.1:8042/dicom-web");
        assert_eq!(e.instance_url("1.2", "1.2.3", "1.2.3.4"), "http://127.0.0.1:8042/dicom-web/studies/1.2/series/1.2.3/instances/1.2.3.4");
        let secret = "dicomweb:https://alice:hunter2@pacs.example/dicom-web".parse::<Endpoint>().unwrap_err().to_string();
        assert!(!secret.contains("hunter2") && !secret.contains("alice"), "{secret}");
        assert!(secret.contains("https://…@pacs.example/dicom-web") && secret.contains(USER_VAR), "{secret}");
        for bad in ["dicomweb:ftp://h/x", "dicomweb:h:8042", "dicomweb:http://", "dicomweb:http://h/x?a=b", "dicomweb:http://h/a b"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn uids_that_could_leave_the_path_are_refused() {
        assert!(check_uid("1.2.840.10008.5.1.4.1.1.3.1").is_ok());
        for bad in ["", "1.2/../3", "1.2?x", "1.2%2F", &"1".repeat(65), "1.2\n"] {
            assert!(check_uid(bad).is_err(), "{bad:?}");
        }
    }
}
