//! STUB — being written (store helper). Same method set as in mod.rs.
use std::time::Duration;

use super::{ClaimRequest, CompletionReport};
use crate::config::DatabaseConfig;
use crate::job::{ClaimedJob, NewJob, Outcome};
use crate::Result;

#[derive(Debug, Clone)]
pub struct SqliteStore {}

pub struct SqliteWaker {}

impl SqliteWaker {
    pub async fn wait(&mut self, _timeout: Duration) -> Result<bool> { todo!() }
}

impl SqliteStore {
    pub async fn connect(_config: &DatabaseConfig) -> Result<Self> { todo!() }
    pub async fn install_schema(&self) -> Result<()> { todo!() }
    pub async fn insert(&self, _jobs: &[NewJob]) -> Result<()> { todo!() }
    pub async fn claim(&self, _request: &ClaimRequest<'_>) -> Result<Vec<ClaimedJob>> { todo!() }
    pub async fn complete(&self, _outcomes: &[Outcome]) -> Result<CompletionReport> { todo!() }
    pub async fn release(&self, _claims: &[(String, i64)]) -> Result<u64> { todo!() }
    pub async fn waker(&self) -> Result<SqliteWaker> { todo!() }
    pub async fn close(&self) {}
}
