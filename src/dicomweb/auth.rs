//! [`Credentials`] for a DICOMweb server, from the environment only: `ECHOVAULT_DICOMWEB_TOKEN`
//! (bearer) or `ECHOVAULT_DICOMWEB_USER` + `ECHOVAULT_DICOMWEB_PASSWORD` (basic). Never from the
//! command line (other users see it in `ps`) nor from the URL; the secret is sent in the
//! `Authorization` header only and never printed: `Debug` redacts it.

use super::error::DicomWebError;
use base64::Engine as _;
use std::fmt;

/// Bearer token variable.
pub const TOKEN_VAR: &str = "ECHOVAULT_DICOMWEB_TOKEN";
/// Basic authentication user variable.
pub const USER_VAR: &str = "ECHOVAULT_DICOMWEB_USER";
/// Basic authentication password variable.
pub const PASSWORD_VAR: &str = "ECHOVAULT_DICOMWEB_PASSWORD";

/// How requests authenticate.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No `Authorization` header.
    #[default]
    None,
    /// HTTP basic authentication.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer TOKEN` (OAuth access tokens of cloud archives).
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("Credentials::None"),
            Credentials::Basic { .. } => f.write_str("Credentials::Basic(<redacted>)"),
            Credentials::Bearer(_) => f.write_str("Credentials::Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Credentials from the process environment.
    pub fn from_env() -> Result<Credentials, DicomWebError> {
        Credentials::from_lookup(|name| std::env::var(name).ok())
    }

    /// Credentials from `lookup(variable)`; an empty value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Credentials, DicomWebError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let (token, user, password) = (get(TOKEN_VAR), get(USER_VAR), get(PASSWORD_VAR));
        match (token, user, password) {
            (None, None, None) => Ok(Credentials::None),
            (Some(token), None, None) => {
                if token.chars().any(|c| c.is_control() || c == ' ') {
                    return Err(DicomWebError::Credentials(format!("{TOKEN_VAR} holds spaces or control characters")));
                }
                Ok(Credentials::Bearer(token))
            }
            (Some(_), _, _) => Err(DicomWebError::Credentials(format!(
                "both {TOKEN_VAR} and {USER_VAR}/{PASSWORD_VAR} are set: set the token (bearer) or the user and password (basic), not both"
            ))),
            (None, Some(user), Some(password)) => {
                if user.contains(':') {
                    return Err(DicomWebError::Credentials(format!("{USER_VAR} holds a ':', which basic authentication cannot carry")));
                }
                Ok(Credentials::Basic { user, password })
            }
            (None, Some(_), None) => Err(DicomWebError::Credentials(format!("{USER_VAR} is set but {PASSWORD_VAR} is not"))),
            (None, None, Some(_)) => Err(DicomWebError::Credentials(format!("{PASSWORD_VAR} is set but {USER_VAR} is not"))),
        }
    }

    /// The `Authorization` header value, if any.
    pub(crate) fn header(&self) -> Option<String> {
        match self {
            Credentials::None => None,
            Credentials::Basic { user, password } => {
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))))
            }
            Credentials::Bearer(token) => Some(format!("Bearer {token}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Credentials, DicomWebError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Credentials::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn environment_gives_basic_bearer_or_none_and_refuses_mixtures() {
        assert_eq!(from(&[]).unwrap(), Credentials::None);
        assert_eq!(from(&[(TOKEN_VAR, "")]).unwrap(), Credentials::None);
        // RFC 7617's example: Aladdin / open sesame.
        let basic = from(&[(USER_VAR, "Aladdin"), (PASSWORD_VAR, "open sesame")]).unwrap();
        assert_eq!(basic.header().unwrap(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        let bearer = from(&[(TOKEN_VAR, "abc.def")]).unwrap();
        assert_eq!(bearer.header().unwrap(), "Bearer abc.def");
        for bad in [
            &[(TOKEN_VAR, "t"), (USER_VAR, "u"), (PASSWORD_VAR, "p")][..],
            &[(USER_VAR, "u")][..],
            &[(PASSWORD_VAR, "p")][..],
            &[(USER_VAR, "a:b"), (PASSWORD_VAR, "p")][..],
            &[(TOKEN_VAR, "two words")][..],
        ] {
            let e = from(bad).unwrap_err().to_string();
            assert!(e.starts_with("DICOMweb credentials: "), "{e}");
            assert!(!e.contains("two words") && !e.contains("a:b"), "secrets stay out of errors: {e}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Credentials::Basic { user: "alice".into(), password: "hunter2".into() };
        let d = format!("{c:?} {:?}", Credentials::Bearer("tok-123".into()));
        assert!(!d.contains("hunter2") && !d.contains("alice") && !d.contains("tok-123"), "{d}");
    }
}
