//! Request-body limits that answer 413 reliably. Refusing a body while the client is still
//! sending it makes many clients report a broken connection instead of the answer, so a body
//! over its route's limit is read on and discarded (up to [`DRAIN_MAX`] beyond the limit) while
//! nothing more of it reaches the handler, and only then refused.

use super::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Bytes read and discarded past the limit before the connection is given up on.
const DRAIN_MAX: usize = 64 << 20;

/// Set in a request's extensions: its body's limit, and whether the body went over it.
#[derive(Clone, Debug)]
pub struct BodyCap {
    /// The route's limit, bytes.
    pub limit: usize,
    /// Which flag (the server's `--max-body` or `--max-upload`).
    pub option: &'static str,
    over: Arc<AtomicBool>,
}

impl BodyCap {
    /// Whether the body went over the limit.
    pub fn exceeded(&self) -> bool {
        self.over.load(Ordering::SeqCst)
    }

    /// The 413 answer, naming `field` when one part of a form went over.
    pub fn refusal(&self, field: Option<&str>) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is over this server's limit of {} bytes ({})", self.limit, self.option),
            field: field.map(str::to_owned),
        }
    }
}

/// A body that passes at most `limit` bytes, then drains the rest and ends in an error.
struct Capped {
    inner: Body,
    seen: usize,
    cap: BodyCap,
}

impl http_body::Body for Capped {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let too_large = || axum::Error::new(format!("request body over {} bytes", this.cap.limit));
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) if this.cap.exceeded() => return Poll::Ready(Some(Err(too_large()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    this.seen = this.seen.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                    if this.seen <= this.cap.limit && !this.cap.exceeded() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    this.cap.over.store(true, Ordering::SeqCst);
                    if this.seen > this.cap.limit.saturating_add(DRAIN_MAX) {
                        return Poll::Ready(Some(Err(too_large())));
                    }
                    // Discard, and read on.
                }
            }
        }
    }
}

/// Route layer: caps the body at `limit` bytes (`option` names the setting in refusals).
pub async fn cap_body(State((limit, option)): State<(usize, &'static str)>, mut req: Request, next: Next) -> Response {
    let cap = BodyCap { limit, option, over: Arc::new(AtomicBool::new(false)) };
    req.extensions_mut().insert(cap.clone());
    let req = req.map(|inner| Body::new(Capped { inner, seen: 0, cap: cap.clone() }));
    let resp = next.run(req).await;
    if cap.exceeded() && resp.status() != StatusCode::PAYLOAD_TOO_LARGE {
        // The handler met the cut-off body as some other error: the size is the reason.
        return cap.refusal(None).into_response();
    }
    resp
}
