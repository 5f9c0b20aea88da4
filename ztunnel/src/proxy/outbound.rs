//! Outbound (15001): a pod's captured connection goes to its original destination — through an
//! HBONE tunnel when the destination is a meshed workload, in plaintext otherwise.
use std::sync::Arc;

use tokio::{net::TcpListener, task::JoinSet};

use super::{Context, Pod, canonical, connect_in, original_dst};
use crate::{hbone, inpod::netns::Netns, metrics::Reporter, state::TunnelProtocol};

pub async fn serve(listener: TcpListener, context: Arc<Context>, pod: Arc<Pod>, netns: Arc<Netns>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let (context, pod, netns) = (context.clone(), pod.clone(), netns.clone());
                    connections.spawn(async move {
                        if let Err(error) = proxy(client, canonical(peer), &context, &pod, &netns).await {
                            tracing::info!(pod = %pod.uid, %peer, %error, "outbound connection failed");
                        }
                    });
                }
                Err(error) => tracing::warn!(pod = %pod.uid, %error, "outbound accept failed"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Why an outbound connection failed.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("no original destination")]
    OriginalDst(#[source] std::io::Error),
    #[error("certificate")]
    Certificate(#[from] crate::identity::ca::Error),
    #[error(transparent)]
    Tunnel(#[from] hbone::client::Error),
    #[error("upstream")]
    Io(#[from] std::io::Error),
}

async fn proxy(
    mut client: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    context: &Context,
    pod: &Pod,
    netns: &Netns,
) -> Result<(), Error> {
    let target = original_dst(&client).map_err(Error::OriginalDst)?;
    let destination = context.state.workload_by_ip(target.ip());
    match destination.filter(|workload| workload.protocol == TunnelProtocol::Hbone) {
        Some(workload) => {
            let source = pod.identity(&context.trust_domain);
            let cert = context.identities.fetch(&source).await?;
            let expected = workload.identity(&context.trust_domain);
            let mut stream = context.pool.open(netns, &cert, &expected, target, peer).await?;
            let labels = context.labels(
                Reporter::Source,
                Some((&pod.name, &pod.namespace, &source)),
                Some((&workload.name, &workload.namespace, &expected)),
                true,
            );
            context.metrics.opened(&labels);
            let relayed = hbone::relay(&mut client, &mut stream).await;
            let (sent, received) = relayed.as_ref().map_or((0, 0), |counts| *counts);
            context.metrics.closed(&labels, sent, received);
            relayed?;
            tracing::info!(src = %source, dst = %expected, %target, sent, received, "outbound via HBONE closed");
        }
        None => {
            let source = pod.identity(&context.trust_domain);
            let labels =
                context.labels(Reporter::Source, Some((&pod.name, &pod.namespace, &source)), None, false);
            let mut upstream = connect_in(netns, target).await?;
            context.metrics.opened(&labels);
            let relayed = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            let (sent, received) = relayed.as_ref().map_or((0, 0), |counts| *counts);
            context.metrics.closed(&labels, sent, received);
            relayed?;
            tracing::info!(pod = %pod.uid, %target, sent, received, "outbound passthrough closed");
        }
    }
    Ok(())
}
