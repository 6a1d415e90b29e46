//! A CQL server in this process for the Scylla store's emulator tests: the in-memory,
//! single-node `kassandra` engine behind a small tokio listener on a free port.
//!
//! It is an emulator of the wire protocol, not of Scylla: it keeps no write timestamps
//! (the last write to arrive wins whatever `USING TIMESTAMP` says), keeps a cell's value
//! when a null is written over it (Scylla writes a tombstone), ignores `IF` conditions, reads a clustering-key equality as `>=`, ignores range restrictions
//! (`c >= ?` ...; see `cut_ranges`), and reports no partitioner. So it proves the wiring
//! (connect, migrations, prepared statements, batches, selects by partition key, paging),
//! never the semantics; those tests need `SCYLLA_URI`.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use kassandra::KassandraSession;
use kassandra::cql::query::QueryString;
use kassandra::frame::request::{Request, RequestOpcode};
use kassandra::frame::response::Response;
use kassandra::frame::response::result::QueryResult;
use kassandra::frame::{request_stream, response_sink};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_openssl::SslStream;

/// A running emulator; stops when dropped.
#[derive(Debug)]
pub struct CqlEmulator {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

type Shared = Arc<Mutex<KassandraSession>>;

impl CqlEmulator {
    /// Listens on 127.0.0.1 on a free port, with an empty store.
    pub async fn start() -> std::io::Result<Self> {
        Self::listen(None).await
    }

    /// As `start`, but every connection is TLS with `certificate` (a client that does not
    /// speak TLS, or does not trust the certificate, cannot talk to it).
    pub async fn start_tls(certificate: &TestCertificate) -> std::io::Result<Self> {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(std::io::Error::other)?;
        acceptor
            .set_private_key(&certificate.key)
            .and_then(|()| acceptor.set_certificate(&certificate.cert))
            .map_err(std::io::Error::other)?;
        Self::listen(Some(acceptor.build())).await
    }

    async fn listen(tls: Option<SslAcceptor>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let session: Shared = Arc::new(Mutex::new(KassandraSession::new()));
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let session = session.clone();
                match &tls {
                    None => {
                        tokio::spawn(serve(stream, session));
                    }
                    Some(acceptor) => {
                        let Ok(ssl) = Ssl::new(acceptor.context()) else {
                            continue;
                        };
                        tokio::spawn(async move {
                            let Ok(mut stream) = SslStream::new(ssl, stream) else {
                                return;
                            };
                            // A client that fails the handshake is dropped.
                            if Pin::new(&mut stream).accept().await.is_ok() {
                                serve(stream, session).await;
                            }
                        });
                    }
                }
            }
        });
        Ok(Self { addr, accept })
    }

    /// `host:port`, as a contact point.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `scylla://` URL of `keyspace` on this emulator (replication factor 1).
    pub fn url(&self, keyspace: &str) -> String {
        format!("scylla://{}/{keyspace}?replication_factor=1", self.addr)
    }
}

impl Drop for CqlEmulator {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Answers one connection's requests in order until it closes.
async fn serve(stream: impl AsyncRead + AsyncWrite + Send + 'static, session: Shared) {
    let (reader, writer) = tokio::io::split(stream);
    let mut requests = pin!(request_stream(reader));
    let mut responses = pin!(response_sink(writer));
    while let Some(Ok((frame, opcode, body))) = requests.next().await {
        let (body, cut) = match opcode {
            RequestOpcode::Prepare => cut_ranges(&body),
            _ => (body.to_vec(), Vec::new()),
        };
        let response = match Request::deserialize(opcode, &body, frame.flags) {
            Ok(request) => with_cut_markers(answer(&session, request), &cut),
            Err(e) => Response::Error(e),
        };
        if responses.send((response, frame.stream)).await.is_err() {
            break;
        }
    }
}

fn answer(session: &Shared, request: Request<'_>) -> Response {
    let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
    let result = match request {
        Request::StartUp(_) | Request::Register { .. } => return Response::Ready,
        Request::Options => return Response::options(),
        Request::Query(query) => session.process(query),
        Request::Prepare(query) => session.prepare(topology_query(query)),
        Request::Execute(execute) => session.execute(execute),
        Request::Batch(batch) => session.process_batch(batch),
        Request::AuthResponse => {
            return Response::Error(kassandra::frame::response::error::Error::new(
                kassandra::error::DbError::ProtocolError,
                "the emulator does not authenticate",
            ));
        }
    };
    match result {
        Ok(result) => Response::Result(result),
        Err(e) => Response::Error(e),
    }
}

/// The engine's grammar knows only `column = value` restrictions and drops whatever
/// follows one it cannot read. So the range restrictions of a statement to prepare
/// (`AND c >= ?`, `>`, `<=`, `<`) are cut from its text (a PREPARE body is one long
/// string), and `with_cut_markers` adds their bind markers back to the answer, so the
/// driver binds every value; the engine ignores those values. A reader that filters the
/// rows it gets (as the query API does) then answers as on a real cluster.
fn cut_ranges(body: &[u8]) -> (Vec<u8>, Vec<String>) {
    let unchanged = || (body.to_vec(), Vec::new());
    let Some((len, text)) = body.split_first_chunk::<4>() else {
        return unchanged();
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return unchanged();
    };
    if usize::try_from(i32::from_be_bytes(*len)).ok() != Some(text.len()) {
        return unchanged();
    }
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let (mut kept, mut cut) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < tokens.len() {
        if let [and, column, op, "?", ..] = tokens[i..]
            && and.eq_ignore_ascii_case("AND")
            && matches!(op, ">=" | ">" | "<=" | "<")
        {
            cut.push(column.to_owned());
            i += 4;
        } else {
            kept.push(tokens[i]);
            i += 1;
        }
    }
    if cut.is_empty() {
        return unchanged();
    }
    let text = kept.join(" ");
    let len = i32::try_from(text.len()).unwrap_or(i32::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    (out, cut)
}

/// A prepared answer with a bind marker for each cut restriction, typed as its column
/// (which the statement must also select).
fn with_cut_markers(response: Response, cut: &[String]) -> Response {
    let Response::Result(QueryResult::Prepared(mut prepared)) = response else {
        return response;
    };
    for column in cut {
        let Some(mut spec) = prepared
            .result_metadata
            .col_specs
            .iter()
            .find(|s| &s.name == column)
            .cloned()
        else {
            return Response::Error(kassandra::frame::response::error::Error::new(
                kassandra::error::DbError::Invalid,
                "the emulator needs a range-restricted column selected too",
            ));
        };
        // Each spec names its table unless the metadata has one for all.
        if spec.table_spec.is_none() {
            spec.table_spec = prepared.result_metadata.global_spec.clone();
        }
        prepared.prepared_metadata.col_specs.push(spec);
    }
    Response::Result(QueryResult::Prepared(prepared))
}

/// The driver prepares `SELECT ... FROM system.local WHERE key = 'local'` to learn the
/// topology; the engine cannot prepare that restriction, and the table has one row, so
/// the restriction is dropped.
fn topology_query(query: QueryString) -> QueryString {
    match query {
        QueryString::Select(mut select)
            if select.table == "local" && select.keyspace.as_deref() == Some("system") =>
        {
            select.r#where.statements.clear();
            QueryString::Select(select)
        }
        other => other,
    }
}

/// A self-signed certificate (its own CA) for 127.0.0.1, made fresh: what a TLS test
/// serves, and trusts by writing `pem()` to a CA file.
#[derive(Debug)]
pub struct TestCertificate {
    cert: X509,
    key: PKey<Private>,
}

impl TestCertificate {
    /// A P-256 key and a certificate valid for a day, for the IP address 127.0.0.1.
    pub fn localhost() -> Result<Self, openssl::error::ErrorStack> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, "pulseline test node")?;
        let name = name.build();
        let mut builder = X509::builder()?;
        builder.set_version(2)?;
        let serial = BigNum::from_u32(1)?.to_asn1_integer()?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(&name)?;
        builder.set_pubkey(&key)?;
        let (from, until) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(1)?);
        builder.set_not_before(&from)?;
        builder.set_not_after(&until)?;
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .build(&builder.x509v3_context(None, None))?;
        builder.append_extension(san)?;
        builder.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        builder.sign(&key, MessageDigest::sha256())?;
        Ok(Self {
            cert: builder.build(),
            key,
        })
    }

    /// The certificate in PEM, as a CA file holds it.
    pub fn pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Vec<u8> {
        let mut out = i32::try_from(text.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(text.as_bytes());
        out
    }

    #[test]
    fn range_restrictions_are_cut_and_named() {
        let (cut_body, cut) = cut_ranges(&body(
            "SELECT night, deleted FROM ks.sleep_night WHERE user_id = ?  AND night >= ?\n AND night <= ?",
        ));
        assert_eq!(
            cut_body,
            body("SELECT night, deleted FROM ks.sleep_night WHERE user_id = ?")
        );
        assert_eq!(cut, ["night", "night"]);
        let (_, cut) = cut_ranges(&body(
            "SELECT b FROM ks.t WHERE a = ? AND b > ? AND b < ? LIMIT 5",
        ));
        assert_eq!(cut, ["b", "b"]);
    }

    #[test]
    fn other_statements_pass_unchanged() {
        for text in [
            "SELECT a FROM ks.t WHERE a = ? AND b = ?",
            "INSERT INTO ks.t (a, b) VALUES (?, ?)",
            "SELECT a FROM ks.t WHERE a >= 'x'",
        ] {
            assert_eq!(cut_ranges(&body(text)), (body(text), Vec::new()), "{text}");
        }
        // Not a long string of the stated length: left to the engine to refuse.
        let odd = b"\x00\x00\x00\x09short".to_vec();
        assert_eq!(cut_ranges(&odd), (odd.clone(), Vec::new()));
    }
}
