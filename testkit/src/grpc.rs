//! The one `prodbox.test.Echo` implementation every gRPC test shares, and helpers that serve
//! tonic servers on loopback.
//!
//! [`EchoService`] reports, in each reply, the sandbox it ran in (`""` for baseline) and the
//! `baggage` metadata it received:
//!
//! * `Unary`: one [`Seen`]; with [`EchoService::forward_to`], it calls the next hop's `Unary`
//!   with the same id instead and returns the next hop's [`Seen`];
//! * `ServerStream`: `count` messages, each produced while the response stream is polled (after
//!   the handler returned), each reporting the sandbox current at production time;
//! * `ClientStream`: one [`Seen`] whose `per_message` holds the sandbox current while each
//!   inbound message was handled, and whose `id` is the number of messages;
//! * `Bidi`: the handler spawns a reader task with [`prodbox_core::spawn`]; for each inbound
//!   message the reader spawns another task with the helper, whose reply reports the sandbox
//!   that task saw (`sandbox`) and the one the reader saw when the message arrived
//!   (`per_message[0]`).
//!
//! Each reply carries the server's name in the `x-echo-server` response metadata
//! ([`SERVER_NAME`]), so tests can tell servers apart. `Seen.baggage` holds every `baggage`
//! metadata entry, joined with [`BAGGAGE_SEPARATOR`]; [`baggage_entries`] splits it again.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt, stream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codegen::{Body, Bytes, StdError, http};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};
use tower_layer::Layer;

use crate::echo::echo_client::EchoClient;
use crate::echo::echo_server::{Echo, EchoServer};
use crate::echo::{Ping, Seen};

/// The response metadata that names the server that answered.
pub const SERVER_NAME: &str = "x-echo-server";

/// Separates the `baggage` metadata entries joined into `Seen.baggage` (a newline, which no
/// metadata value can hold).
pub const BAGGAGE_SEPARATOR: &str = "\n";

/// The `baggage` metadata entries a [`Seen`] reports, in order (none for an empty report).
pub fn baggage_entries(seen: &Seen) -> Vec<&str> {
    if seen.baggage.is_empty() {
        return Vec::new();
    }
    seen.baggage.split(BAGGAGE_SEPARATOR).collect()
}

/// The current sandbox key, or `""` for baseline.
pub fn current_key() -> String {
    prodbox_core::current().map_or_else(String::new, |s| s.key().to_string())
}

/// The name in a response's [`SERVER_NAME`] metadata, or `""`.
pub fn server_name(metadata: &MetadataMap) -> String {
    metadata
        .get(SERVER_NAME)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

type Forward =
    Arc<dyn Fn(Ping) -> Pin<Box<dyn Future<Output = Result<Seen, Status>> + Send>> + Send + Sync>;

/// The shared `Echo` implementation; see the [module docs](self). Cheap to clone; clones share
/// the call counter.
#[derive(Clone)]
pub struct EchoService {
    name: Arc<str>,
    next: Option<Forward>,
    fail_with: Option<Code>,
    calls: Arc<AtomicUsize>,
}

impl std::fmt::Debug for EchoService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoService")
            .field("name", &self.name)
            .field("forwards", &self.next.is_some())
            .field("fail_with", &self.fail_with)
            .field("calls", &self.calls.load(Ordering::SeqCst))
            .finish()
    }
}

impl EchoService {
    /// An echo server named `name` (reported in [`SERVER_NAME`] metadata).
    pub fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            next: None,
            fail_with: None,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// `Unary` calls `client`'s `Unary` with the same id and returns its reply. Give the client
    /// prodbox's interceptor or layer to propagate the sandbox.
    pub fn forward_to<T>(mut self, client: EchoClient<T>) -> Self
    where
        T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
        T::Error: Into<StdError>,
        T::Future: Send,
        T::ResponseBody: Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as Body>::Error: Into<StdError> + Send,
    {
        self.next = Some(Arc::new(move |ping: Ping| {
            let mut client = client.clone();
            Box::pin(async move { client.unary(ping).await.map(Response::into_inner) })
        }));
        self
    }

    /// Every call fails with `code` (after being counted).
    pub fn fail_with(mut self, code: Code) -> Self {
        self.fail_with = Some(code);
        self
    }

    /// The number of calls that reached this server's handlers (all four kinds).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> EchoServer<Self> {
        EchoServer::new(self)
    }

    fn enter(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.fail_with {
            Some(code) => Err(Status::new(
                code,
                format!("echo server {} fails on purpose", self.name),
            )),
            None => Ok(()),
        }
    }

    fn respond<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        if let Ok(name) = MetadataValue::try_from(&*self.name) {
            response.metadata_mut().insert(SERVER_NAME, name);
        }
        response
    }
}

fn baggage_of(metadata: &MetadataMap) -> String {
    metadata
        .get_all("baggage")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_encoded_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(BAGGAGE_SEPARATOR)
}

/// A boxed stream of replies.
pub type SeenStream = Pin<Box<dyn Stream<Item = Result<Seen, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<Ping>) -> Result<Response<Seen>, Status> {
        self.enter()?;
        let baggage = baggage_of(request.metadata());
        let ping = request.into_inner();
        if let Some(next) = &self.next {
            let seen = next(Ping {
                id: ping.id,
                count: 0,
            })
            .await?;
            return Ok(self.respond(seen));
        }
        // Let the task be suspended once, so that the context must survive a real `.await`.
        tokio::task::yield_now().await;
        Ok(self.respond(Seen {
            id: ping.id,
            sandbox: current_key(),
            baggage,
            per_message: Vec::new(),
        }))
    }

    type ServerStreamStream = SeenStream;

    async fn server_stream(
        &self,
        request: Request<Ping>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        self.enter()?;
        let baggage = baggage_of(request.metadata());
        let ping = request.into_inner();
        let replies = stream::unfold(0u32, move |i| {
            let baggage = baggage.clone();
            async move {
                if i == ping.count {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                let seen = Seen {
                    id: u64::from(i),
                    sandbox: current_key(),
                    baggage,
                    per_message: Vec::new(),
                };
                Some((Ok(seen), i + 1))
            }
        });
        Ok(self.respond(Box::pin(replies) as SeenStream))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<Ping>>,
    ) -> Result<Response<Seen>, Status> {
        self.enter()?;
        let baggage = baggage_of(request.metadata());
        let mut inbound = request.into_inner();
        let mut per_message = Vec::new();
        while let Some(_ping) = inbound.message().await? {
            tokio::task::yield_now().await;
            per_message.push(current_key());
        }
        Ok(self.respond(Seen {
            id: per_message.len() as u64,
            sandbox: current_key(),
            baggage,
            per_message,
        }))
    }

    type BidiStream = SeenStream;

    async fn bidi(
        &self,
        request: Request<Streaming<Ping>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        self.enter()?;
        let baggage = baggage_of(request.metadata());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<Seen, Status>>(16);
        prodbox_core::spawn(async move {
            loop {
                let ping = match inbound.message().await {
                    Ok(Some(ping)) => ping,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let reader_saw = current_key();
                let tx = tx.clone();
                let baggage = baggage.clone();
                prodbox_core::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let seen = Seen {
                        id: ping.id,
                        sandbox: current_key(),
                        baggage,
                        per_message: vec![reader_saw],
                    };
                    let _ = tx.send(Ok(seen)).await;
                });
            }
        });
        Ok(self.respond(Box::pin(ReceiverStream::new(rx)) as SeenStream))
    }
}

/// Serves `service` behind `layer` (such as `prodbox_grpc::SandboxLayer`, or
/// `tower_layer::Identity` for none) on a free port of 127.0.0.1 until the test's runtime ends;
/// returns the address.
pub async fn serve_echo<L, ResBody>(layer: L, service: EchoService) -> SocketAddr
where
    L: Layer<Routes> + Clone + Send + Sync + 'static,
    L::Service: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    <L::Service as tower_service::Service<http::Request<tonic::body::Body>>>::Future: Send,
    <L::Service as tower_service::Service<http::Request<tonic::body::Body>>>::Error:
        Into<StdError> + Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<StdError>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let router = Server::builder()
        .layer(layer)
        .add_service(service.into_server());
    tokio::spawn(async move {
        let incoming = TcpListenerStream::new(listener);
        if let Err(error) = router.serve_with_incoming(incoming).await {
            eprintln!("test gRPC server on {addr} stopped: {error}");
        }
    });
    addr
}

/// The `http://addr` URI of a server.
pub fn uri(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A lazily connecting channel to `addr`.
pub fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(uri(addr))
        .expect("a valid loopback URI")
        .connect_lazy()
}

/// `count` pings with ids `first..first + count`, one every millisecond, for the streaming
/// calls.
pub fn pings(first: u64, count: u64) -> impl Stream<Item = Ping> + Send + 'static {
    stream::iter(first..first + count).then(|id| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ping { id, count: 0 }
    })
}
