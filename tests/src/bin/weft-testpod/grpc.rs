//! gRPC for the waypoint's tests (tonic, HTTP/2 with trailers): `grpc-echo` serves
//! `weft.test.Echo` (`tests/proto/echo.proto`) under a name; `grpc-call` makes unary calls or
//! one bidirectional stream and prints what answered.
use std::{collections::BTreeMap, net::SocketAddr, pin::Pin};

use anyhow::Context;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

mod proto {
    tonic::include_proto!("weft.test");
}

use proto::{
    Message,
    echo_client::EchoClient,
    echo_server::{Echo, EchoServer},
};

struct Server {
    name: String,
}

#[tonic::async_trait]
impl Echo for Server {
    async fn unary(&self, request: Request<Message>) -> Result<Response<Message>, Status> {
        let text = request.into_inner().text;
        if text == "fail" {
            return Err(Status::not_found(format!("{} was asked to fail", self.name)));
        }
        Ok(Response::new(Message { text, server: self.name.clone() }))
    }

    type ChatStream = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send>>;

    async fn chat(&self, request: Request<Streaming<Message>>) -> Result<Response<Self::ChatStream>, Status> {
        let name = self.name.clone();
        let answers = request
            .into_inner()
            .map(move |message| message.map(|message| Message { text: message.text, server: name.clone() }));
        Ok(Response::new(Box::pin(answers)))
    }
}

/// Serves `weft.test.Echo` on `port` (every address) as `name`; prints `ready` once listening.
pub fn echo(port: u16, name: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port)).await?;
        println!("ready");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(Server { name: name.to_owned() }))
            .serve_with_incoming(incoming)
            .await
            .context("serving gRPC")
    })
}

/// `count` unary calls with `text` to `to` over one connection; prints a tally of the answers:
/// `<count> ok server=<name>` or `<count> code=<gRPC code>`.
pub fn unary(to: SocketAddr, text: &str, count: usize) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = EchoClient::new(connect(to).await?);
        let mut tally: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..count {
            let answer = match client.unary(Message { text: text.to_owned(), server: String::new() }).await {
                Ok(answer) => format!("ok server={}", answer.into_inner().server),
                Err(status) => format!("code={:?}", status.code()),
            };
            *tally.entry(answer).or_default() += 1;
        }
        for (answer, count) in tally {
            println!("{count} {answer}");
        }
        Ok(())
    })
}

/// One bidirectional stream to `to`: sends `count` messages, each only once the one before it
/// was answered (so a proxy that held the request until it ended would stall it); prints
/// `chat: <count> answered in order by <name>`, or fails.
pub fn chat(to: SocketAddr, count: usize) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = EchoClient::new(connect(to).await?);
        let (send, outbound) = tokio::sync::mpsc::channel::<Message>(1);
        let message = |index: usize| Message { text: format!("message {index}"), server: String::new() };
        send.send(message(0)).await?;
        let mut answers =
            client.chat(tokio_stream::wrappers::ReceiverStream::new(outbound)).await?.into_inner();
        let mut servers = std::collections::BTreeSet::new();
        for index in 0..count {
            let answer =
                answers.message().await?.with_context(|| format!("the stream ended after {index}"))?;
            anyhow::ensure!(answer.text == message(index).text, "answer {index} was {:?}", answer.text);
            servers.insert(answer.server);
            if index + 1 < count {
                send.send(message(index + 1)).await?;
            }
        }
        drop(send);
        anyhow::ensure!(answers.message().await?.is_none(), "an answer more than was asked");
        let servers: Vec<String> = servers.into_iter().collect();
        println!("chat: {count} answered in order by {}", servers.join(","));
        Ok(())
    })
}

async fn connect(to: SocketAddr) -> anyhow::Result<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{to}"))?;
    endpoint.connect().await.with_context(|| format!("connecting to {to}"))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}
