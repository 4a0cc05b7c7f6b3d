//! Bearer tokens. On loopback only the admin endpoints (ingest jobs, repair) need the token;
//! bound to any other address the server refuses to start without one, and every request needs
//! it.

use super::error::ApiError;
use super::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Whether the request carries the server's token. Compared in time independent of where the
/// two first differ.
fn authorised(st: &AppState, req: &Request) -> bool {
    authorised_headers(st, req.headers())
}

/// [`authorised`] from the request's headers alone.
fn authorised_headers(st: &AppState, headers: &axum::http::HeaderMap) -> bool {
    let Some(token) = st.config.token.as_deref() else { return false };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|g| g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
}

fn unauthorised(message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Every request, when the server listens off loopback.
pub async fn require_token_off_loopback(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.config.listen.ip().is_loopback() || authorised(&st, &req) {
        next.run(req).await
    } else {
        unauthorised("this server needs its token: send the header 'Authorization: Bearer TOKEN'")
    }
}

/// Admin endpoints, always.
pub async fn require_admin(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match admin_refusal(&st, &req) {
        None => next.run(req).await,
        Some(refusal) => refusal,
    }
}

/// The refusal of a request that may not do what only an admin may (also asked by handlers
/// whose request can write, such as zero-shot with `store`): 403 when the server has no token,
/// 401 when the request lacks it; `None` when it may.
pub fn admin_refusal(st: &AppState, req: &Request) -> Option<Response> {
    if st.config.token.is_none() {
        return Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin endpoints (ingest jobs, repair, zero-shot with store, server paths in task requests) need a token: start the server with --token TOKEN (or ECHOVAULT_TOKEN)",
        )
        .into_response());
    }
    if authorised(st, req) {
        None
    } else {
        Some(unauthorised("admin endpoints need the server's token: send the header 'Authorization: Bearer TOKEN'"))
    }
}

/// Whether an answer may carry source paths (PACS paths often hold patient names or MRNs):
/// when the server runs with `--show-paths`, or the request carries the admin token.
pub fn may_see_paths(st: &AppState, headers: &axum::http::HeaderMap) -> bool {
    st.config.show_paths || authorised_headers(st, headers)
}

/// Removes every `source` field of an answer (hits, records) the client may not see, and a
/// DICOMweb item's `url` / `wado_url` (the same string as its source).
pub fn hide_paths(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            for key in ["source", "url", "wado_url"] {
                o.remove(key);
            }
            o.values_mut().for_each(hide_paths);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(hide_paths),
        _ => {}
    }
}

#[cfg(test)]
mod hide_paths_tests {
    use super::hide_paths;

    #[test]
    fn a_dicomweb_items_url_is_hidden_with_its_source() {
        let url = "http://pacs/dicom-web/studies/1.2/series/1.2.3/instances/1.2.3.4";
        let mut v =
            serde_json::json!({"hits": [{"id": "a", "source": url, "url": url, "sop": "1.2.3.4"}], "record": {"extra": {"wado_url": url}}});
        hide_paths(&mut v);
        assert_eq!(v, serde_json::json!({"hits": [{"id": "a", "sop": "1.2.3.4"}], "record": {"extra": {}}}));
    }
}
