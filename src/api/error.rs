//! API errors and their HTTP status codes, in one match. Bodies are plain text naming what is
//! wrong (spec/helios-api-v3.md §4.2 answers 4xx with a plain-text message).
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON or a bad query value.
    #[error("{0}")]
    BadRequest(String),
    /// The thing asked for is not on the device.
    #[error("")]
    NotFound,
    /// The body is not `application/json`.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// Well-formed JSON that fails validation.
    #[error("{0}")]
    Unprocessable(String),
    /// The request conflicts with the device's state.
    #[error("{0}")]
    Conflict(String),
    /// A component the request needs is not available.
    #[error("{0}")]
    Unavailable(String),
    /// No key, or not one of ours (plain `Unauthorized`, spec/device-api.md §2.2).
    #[error("Unauthorized")]
    Unauthorized,
    /// The device API's JSON error envelope `{"status":"failed","message":…}` with a status
    /// (spec/device-api.md §2.4).
    #[error("{message}")]
    Failed { status: u16, message: String },
    /// A plain-text error with a status, for the endpoints the spec answers in text.
    #[error("{message}")]
    Text { status: u16, message: String },
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Failed { status, .. } | ApiError::Text { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status_code());
        match self {
            ApiError::NotFound => r.finish(),
            ApiError::Failed { message, .. } => {
                r.json(serde_json::json!({"status": "failed", "message": message}))
            }
            other => r
                .content_type("text/plain; charset=utf-8")
                .body(other.to_string()),
        }
    }
}
