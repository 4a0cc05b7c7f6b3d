//! Every request counted, timed and logged: method, route, status, latency. The route is the
//! template (`/v1/patients/{key}`), never the path, and no body is logged, so neither query
//! texts nor patient keys reach the logs.

use super::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// The outermost layer: sees every response, refusals included.
pub async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    st.metrics.observe(&route, method.as_str(), status, elapsed);
    tracing::info!(target: "echovault::serve", "{method} {route} {status} {:.1} ms", elapsed.as_secs_f64() * 1e3);
    resp
}
