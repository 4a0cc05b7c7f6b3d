//! [`DicomWebError`]: what a DICOMweb request can fail with. Every error of a request names the
//! objects it concerned (Study / Series / SOP Instance UIDs, [`Target`]), the URL (which never
//! holds credentials: [`super::Endpoint`] refuses them) and, when the server answered, the HTTP
//! status.

use std::fmt;

/// The objects a request concerned, as far as they are known: a study search has none, a
/// series search its study, a retrieval all three.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Target {
    /// StudyInstanceUID.
    pub study: Option<String>,
    /// SeriesInstanceUID.
    pub series: Option<String>,
    /// SOPInstanceUID.
    pub sop: Option<String>,
}

impl Target {
    /// The study search (no object yet).
    pub fn search() -> Target {
        Target::default()
    }

    /// One study.
    pub fn study(study: &str) -> Target {
        Target { study: Some(study.to_owned()), ..Target::default() }
    }

    /// One series of a study.
    pub fn series(study: &str, series: &str) -> Target {
        Target { study: Some(study.to_owned()), series: Some(series.to_owned()), sop: None }
    }

    /// One instance.
    pub fn instance(study: &str, series: &str, sop: &str) -> Target {
        Target { study: Some(study.to_owned()), series: Some(series.to_owned()), sop: Some(sop.to_owned()) }
    }
}

impl Target {
    /// What kind of object it is, without its UIDs: "study search", "study", "series",
    /// "instance".
    pub fn kind(&self) -> &'static str {
        match (&self.study, &self.series, &self.sop) {
            (_, _, Some(_)) => "instance",
            (_, Some(_), None) => "series",
            (Some(_), None, None) => "study",
            (None, None, None) => "study search",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [("study", &self.study), ("series", &self.series), ("instance", &self.sop)]
            .into_iter()
            .filter_map(|(what, uid)| uid.as_ref().map(|u| format!("{what} {u}")))
            .collect();
        if parts.is_empty() {
            f.write_str("study search")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Everything the DICOMweb client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DicomWebError {
    /// The `dicomweb:URL` source itself is unusable.
    #[error("DICOMweb source '{source_text}': {reason}")]
    Source {
        /// What was given (never holds credentials: such a source is refused before it is kept).
        source_text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The credentials in the environment are inconsistent.
    #[error("DICOMweb credentials: {0}")]
    Credentials(String),
    /// The server answered with an error status.
    #[error("DICOMweb {target}: HTTP {status} from {url}{}", attempts_note(*attempts))]
    Status {
        /// What the request concerned.
        target: Box<Target>,
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Requests made (retries included).
        attempts: u32,
    },
    /// No answer: connection refused or reset, timeout, a body cut short.
    #[error("DICOMweb {target}: {reason} ({url}){}", attempts_note(*attempts))]
    Transport {
        /// What the request concerned.
        target: Box<Target>,
        /// The URL requested.
        url: String,
        /// What went wrong.
        reason: String,
        /// Requests made (retries included).
        attempts: u32,
    },
    /// The server answered 2xx with something that is not what DICOMweb specifies.
    #[error("DICOMweb {target}: bad response from {url}: {reason}")]
    Response {
        /// What the request concerned.
        target: Box<Target>,
        /// The URL requested.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" after {attempts} attempts")
    } else {
        String::new()
    }
}

impl DicomWebError {
    /// The HTTP status the server answered, if it answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            DicomWebError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The objects the failed request concerned (none for a source or credentials error).
    pub fn target(&self) -> Option<&Target> {
        match self {
            DicomWebError::Status { target, .. } | DicomWebError::Transport { target, .. } | DicomWebError::Response { target, .. } => {
                Some(target)
            }
            DicomWebError::Source { .. } | DicomWebError::Credentials(_) => None,
        }
    }

    /// The message without the URL (for a failure keyed by that URL): the UIDs, the status or
    /// what went wrong, the attempts.
    pub fn reason(&self) -> String {
        match self {
            DicomWebError::Status { target, status, attempts, .. } => format!("{target}: HTTP {status}{}", attempts_note(*attempts)),
            DicomWebError::Transport { target, reason, attempts, .. } => format!("{target}: {reason}{}", attempts_note(*attempts)),
            DicomWebError::Response { target, reason, .. } => format!("{target}: bad response: {reason}"),
            DicomWebError::Source { .. } | DicomWebError::Credentials(_) => self.to_string(),
        }
    }

    /// What failed without the UIDs, the URL or the server's words (for logs at warn/info,
    /// which may be shared): what kind of object, the HTTP status or the kind of failure.
    pub fn brief(&self) -> String {
        let kind = self.target().map_or("source", Target::kind);
        match self {
            DicomWebError::Status { status, .. } => format!("DICOMweb {kind}: HTTP {status}"),
            DicomWebError::Transport { .. } => format!("DICOMweb {kind}: no answer or a broken connection"),
            DicomWebError::Response { .. } => format!("DICOMweb {kind}: bad response"),
            DicomWebError::Source { .. } | DicomWebError::Credentials(_) => self.to_string(),
        }
    }

    /// The URL of the failed request.
    pub fn url(&self) -> Option<&str> {
        match self {
            DicomWebError::Status { url, .. } | DicomWebError::Transport { url, .. } | DicomWebError::Response { url, .. } => Some(url),
            DicomWebError::Source { .. } | DicomWebError::Credentials(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_uids_the_status_and_the_attempts() {
        let e = DicomWebError::Status {
            target: Box::new(Target::instance("1.2", "1.2.3", "1.2.3.4")),
            url: "http://h/dicom-web/studies/1.2/series/1.2.3/instances/1.2.3.4".into(),
            status: 503,
            attempts: 4,
        };
        let s = e.to_string();
        assert!(s.contains("study 1.2, series 1.2.3, instance 1.2.3.4"), "{s}");
        assert!(s.contains("HTTP 503") && s.contains("after 4 attempts"), "{s}");
        assert_eq!(e.status(), Some(503));
        assert_eq!(e.reason(), "study 1.2, series 1.2.3, instance 1.2.3.4: HTTP 503 after 4 attempts");
        let once = DicomWebError::Status { target: Box::new(Target::search()), url: "u".into(), status: 404, attempts: 1 };
        assert_eq!(once.to_string(), "DICOMweb study search: HTTP 404 from u");
        // For logs: no UID, no URL.
        assert_eq!(e.brief(), "DICOMweb instance: HTTP 503");
        let cut = DicomWebError::Transport {
            target: Box::new(Target::study("1.2")),
            url: "http://h/studies/1.2".into(),
            reason: "reset by 1.2".into(),
            attempts: 1,
        };
        assert_eq!(cut.brief(), "DICOMweb study: no answer or a broken connection");
    }
}
