//! `corral mcp`: the Model Context Protocol server on stdio, for MCP clients that
//! orchestrate (spawn, wait, aggregate) or that run inside an agent (report, hand off).

use super::{Ctx, Fail, Result};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    serve(ctx, a, None)
}

/// Serves MCP; with `cluster`, the orchestrator's tools work on the cluster's database.
pub fn serve(ctx: &Ctx, _a: Args, cluster: Option<super::cluster::Target>) -> Result {
    let ctx = Ctx { ws: ctx.ws.clone(), data: ctx.data.clone() };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fail { code: 1, msg: format!("cannot start the MCP server: {e}") })?;
    let served = rt.block_on(crate::mcp::serve(ctx, cluster));
    // A wait still following the event stream when the client left must not keep the
    // process alive.
    rt.shutdown_background();
    served.map_err(|e| Fail { code: 1, msg: format!("mcp: {e:#}") })?;
    Ok(0)
}
