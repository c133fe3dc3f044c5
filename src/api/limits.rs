//! Limits against slow or stalled clients: a request body must keep arriving (at most
//! [`BODY_IDLE`] between chunks) and be complete within [`BODY_TOTAL`]; otherwise the body
//! reads fail, the request gets a 400 and the connection is closed. Request heads are bounded
//! by actix-web's client request timeout (set in `bind`).
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use futures::StreamExt;
use tokio::time::Instant;

/// The longest pause between two chunks of a request body.
pub const BODY_IDLE: Duration = Duration::from_secs(10);
/// The longest time to receive a whole request body.
pub const BODY_TOTAL: Duration = Duration::from_secs(60);
/// The longest time to receive a request head (actix-web answers 408 after it).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Middleware: wraps the request body in the idle and total deadlines.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let payload = req.take_payload();
    let path = req.path().to_string();
    let deadline = Instant::now() + BODY_TOTAL;
    let stream = futures::stream::unfold(Some(payload), move |state| {
        let path = path.clone();
        async move {
            let mut payload = state?;
            let wait = BODY_IDLE.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, payload.next()).await {
                Ok(Some(chunk)) => Some((chunk, Some(payload))),
                Ok(None) => None,
                Err(_) => {
                    log::warn!(path:% = path, delay_ms = wait.as_millis() as u64,
                    decision = "reject", reason = "request body too slow"; "Request body timed out");
                    let e =
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "request body too slow");
                    Some((Err(PayloadError::Io(e)), None))
                }
            }
        }
    });
    req.set_payload(Payload::Stream {
        payload: Box::pin(stream),
    });
    next.call(req).await
}
