//! Every call to Redis, from the directory and the links alike, is cut off at [`REDIS_TIMEOUT`]:
//! a Redis that is down, stalled or restarting makes it fail fast, and the caller answers "try
//! again later" rather than wait.

use redis::RedisError;
use std::time::Duration;
use tokio::time::timeout;

/// Longest any one Redis call may take, connecting included.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a directory step could not be taken now.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// Redis answered with an error, refused the connection, or took longer than
    /// [`REDIS_TIMEOUT`].
    #[error("the cluster directory is unreachable: {0}")]
    Redis(String),
    /// This process does not hold its lease, so its claims would be treated as dead.
    #[error("this instance does not hold its lease in the cluster directory")]
    NoLease,
}

impl From<RedisError> for Unavailable {
    fn from(error: RedisError) -> Self {
        Unavailable::Redis(error.to_string())
    }
}

/// A Redis call cut off at [`REDIS_TIMEOUT`].
pub async fn bounded<T>(
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Unavailable> {
    match timeout(REDIS_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Unavailable::Redis(format!(
            "no answer within {REDIS_TIMEOUT:?}"
        ))),
    }
}
