//! Serves the local API on a Unix socket that only root can open.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc::UnboundedSender, oneshot};
use tokio::task::JoinHandle;

use crate::agent::Input;
use crate::api::{Request, Response, MAX_REQUEST_BYTES};

/// Binds `path` (replacing a stale socket) and serves until the handle is aborted.
pub async fn serve(path: &Path, agent: UnboundedSender<Input>) -> anyhow::Result<JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if UnixStream::connect(path).await.is_ok() {
        anyhow::bail!("another peer agent is already serving {}", path.display());
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting API socket {}", path.display()))?;
    Ok(tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let agent = agent.clone();
                        conns.spawn(async move {
                            if let Err(e) = handle(stream, agent).await {
                                tracing::debug!("api connection: {e:#}");
                            }
                        });
                    }
                    Err(e) => tracing::warn!("api accept: {e}"),
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }))
}

async fn handle(stream: UnixStream, agent: UnboundedSender<Input>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let n = BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1)).read_line(&mut line).await?;
    let resp = if n > MAX_REQUEST_BYTES {
        Response::Error { message: format!("request larger than {MAX_REQUEST_BYTES} bytes") }
    } else {
        match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error { message: format!("malformed request: {e}") },
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if agent.send(Input::Api(req, tx)).is_err() {
                    Response::Error { message: "agent is shutting down".into() }
                } else {
                    rx.await.unwrap_or(Response::Error { message: "agent is shutting down".into() })
                }
            }
        }
    };
    let mut bytes = serde_json::to_vec(&resp)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    Ok(())
}
