//! Request bodies read strictly into the library's request types: a JSON object, or the text
//! parts of a multipart form. A malformed body, a field of the wrong type and a field the
//! endpoint does not know (the types refuse unknown fields) are each refused with the field
//! named.

use super::error::ApiError;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A JSON body as a `T`. An empty body is the empty object (every field left to its default).
pub fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return from_value(Value::Object(Map::new()));
    }
    // serde reads a struct from an array too (fields by position): only an object names them.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Err(e) => ApiError::bad_request(format!("malformed JSON body: {e}")),
            Ok(_) => ApiError::bad_request("the request body must be a JSON object ({\"field\": value, …})"),
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(t) => Ok(t),
        Err(e) if e.inner().is_syntax() || e.inner().is_eof() => Err(ApiError::bad_request(format!("malformed JSON body: {}", e.inner()))),
        Err(e) => Err(refused(e.path(), e.inner())),
    }
}

/// The text parts of a multipart form as a `T`. Each part is a string; one that the type wants
/// as something else (`k=5`, `exact=true`, `vector=[…]`) is read as JSON.
pub fn from_form<T: DeserializeOwned>(parts: Vec<(String, String)>) -> Result<T, ApiError> {
    let mut map = Map::new();
    for (name, value) in parts {
        if map.insert(name.clone(), Value::String(value)).is_some() {
            return Err(ApiError::field(&name, format!("form field '{name}' given twice")));
        }
    }
    // Each round turns at most one more string into JSON: bounded by the number of fields.
    for _ in 0..=map.len() {
        match serde_path_to_error::deserialize::<_, T>(Value::Object(map.clone())) {
            Ok(t) => return Ok(t),
            Err(e) => {
                let field = top_field(e.path());
                let parsed = field.as_deref().and_then(|f| match map.get(f) {
                    Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok().filter(|v| !v.is_string()),
                    _ => None,
                });
                match (field, parsed) {
                    (Some(f), Some(v)) => {
                        map.insert(f, v);
                    }
                    _ => return Err(refused(e.path(), e.inner())),
                }
            }
        }
    }
    from_value(Value::Object(map))
}

/// A JSON object's fields as a `T` (what is left of a body after a dispatching field).
pub fn from_map<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, ApiError> {
    from_value(Value::Object(map))
}

fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| refused(e.path(), e.inner()))
}

/// The top-level field of a deserialisation path (`vector[3]` → `vector`), if any.
fn top_field(path: &serde_path_to_error::Path) -> Option<String> {
    let p = path.to_string();
    let top = p.split(['.', '[']).next().unwrap_or("");
    (!top.is_empty() && top != "?").then(|| top.to_owned())
}

fn refused(path: &serde_path_to_error::Path, e: &serde_json::Error) -> ApiError {
    // serde_json appends "at line L column C", which says nothing for a JSON value.
    let msg = e.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
    // A missing field is reported at the level of the object that lacks it.
    let missing = || msg.strip_prefix("missing field `").and_then(|m| m.split('`').next()).map(str::to_owned);
    match top_field(path).or_else(missing) {
        Some(f) => ApiError::field(&f, format!("{f}: {msg}")),
        None => ApiError::bad_request(msg),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Req {
        text: Option<String>,
        k: usize,
        exact: bool,
        vector: Option<Vec<f32>>,
    }
    impl Default for Req {
        fn default() -> Self {
            Req { text: None, k: 10, exact: false, vector: None }
        }
    }

    #[test]
    fn json_bodies_name_the_field_at_fault() {
        assert_eq!(from_json::<Req>(br#"{"text":"mitral","k":3}"#).unwrap(), Req { text: Some("mitral".into()), k: 3, ..Req::default() });
        assert_eq!(from_json::<Req>(b" ").unwrap(), Req::default());
        let e = from_json::<Req>(br#"{"text":"x","limit":3}"#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.field.as_deref()), (400, Some("limit")));
        assert!(e.message.contains("unknown field `limit`"), "{}", e.message);
        let e = from_json::<Req>(br#"{"k":"five"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("k"));
        assert!(!e.message.contains("line 1"), "{}", e.message);
        let e = from_json::<Req>(br#"{"vector":[1,"a"]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("vector"));
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Needs {
            manifest: String,
        }
        let e = from_json::<Needs>(b"{}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("manifest"), "{}", e.message);
        let e = from_json::<Req>(br#"{"k":1,"#).unwrap_err();
        assert_eq!(e.field, None);
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        let e = from_json::<Req>(br#"["mitral", 3]"#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.field), (400, None));
        assert!(e.message.contains("JSON object"), "{}", e.message);
    }

    #[test]
    fn form_parts_are_strings_unless_the_type_wants_json() {
        let parts = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        let r: Req = from_form(parts(&[("text", "42"), ("k", "5"), ("exact", "true"), ("vector", "[0.5, 1]")])).unwrap();
        assert_eq!(r, Req { text: Some("42".into()), k: 5, exact: true, vector: Some(vec![0.5, 1.0]) });
        let e = from_form::<Req>(parts(&[("k", "many")])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("k"));
        let e = from_form::<Req>(parts(&[("colour", "red")])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("colour"));
        assert!(from_form::<Req>(parts(&[("k", "1"), ("k", "2")])).is_err());
    }
}
