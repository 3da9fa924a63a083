//! talk: placeholder until step 4
use super::Server;
use crate::cli::Mode;
use anyhow::Result;
use std::net::TcpListener;
use std::sync::Arc;
pub fn fits(_mode: Mode) -> Result<(), String> {
    Err("not yet".into())
}
pub fn run(_l: &TcpListener, _s: &Arc<Server>) -> Result<()> {
    Ok(())
}
