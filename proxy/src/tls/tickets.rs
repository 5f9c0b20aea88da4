//! The TLS 1.3 session tickets a client configuration keeps, per server name (a peer pod's IP,
//! [`super::resumption_name`]), to resume sessions with. rustls's own store keeps 8 per server:
//! a node proxy opening more connections than that to one pod at once (its clients' connections
//! arriving together, each on a tunnel of its own) ran out, and every handshake past the eighth
//! exchanged certificates and signatures: 27 % of them from 32 clients at once. A ticket is
//! used once, and each connection brings two, so a pair that connects often holds up to
//! [`PER_PEER`]; the newest go first, as they are the likeliest still in the server's cache (a
//! server keeps 256 sessions, for all its clients: with many, a client's oldest may be gone).
//! Each ticket holds a copy of the server's certificate chain (1–2 KB), so a configuration
//! keeps no more than rustls's default would ([`TOTAL`]): past it, the peer holding the most
//! gives up its oldest.
use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use rustls::{
    NamedGroup,
    client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue},
    pki_types::ServerName,
};

/// Tickets kept per server: as many connections to one pod as may begin their handshakes at
/// once and still all resume.
pub const PER_PEER: usize = 64;

/// Servers remembered per configuration (rustls's default, 256 sessions, is 32 servers); the
/// one added first goes.
pub const PEERS: usize = 32;

/// Tickets kept per configuration, all servers together (as many as rustls's default store
/// keeps at most: 8 for each of 32 servers).
pub const TOTAL: usize = 256;

/// A [`ClientSessionStore`] of TLS 1.3 tickets ([`PER_PEER`] per server, for [`PEERS`] servers,
/// [`TOTAL`] in all) and key-exchange hints; TLS 1.2 sessions are never kept, as the proxies
/// speak TLS 1.3 only.
#[derive(Debug, Default)]
pub struct Tickets(Mutex<Peers>);

#[derive(Debug, Default)]
struct Peers {
    by_name: HashMap<ServerName<'static>, Peer>,
    /// Names in the order they were added, oldest first.
    added: VecDeque<ServerName<'static>>,
    /// Tickets held, all servers together.
    total: usize,
}

#[derive(Debug, Default)]
struct Peer {
    kx_hint: Option<NamedGroup>,
    /// Oldest first.
    tickets: VecDeque<Tls13ClientSessionValue>,
}

impl Peers {
    /// The server's entry, added (and the oldest server forgotten, past [`PEERS`]) if new.
    fn entry(&mut self, name: ServerName<'static>) -> &mut Peer {
        if !self.by_name.contains_key(&name) {
            while self.by_name.len() >= PEERS {
                let Some(oldest) = self.added.pop_front() else { break };
                if let Some(forgotten) = self.by_name.remove(&oldest) {
                    self.total -= forgotten.tickets.len();
                }
            }
            self.added.push_back(name.clone());
        }
        self.by_name.entry(name).or_default()
    }

    /// Back within bounds after a ticket for `name` joined: its own oldest goes past
    /// [`PER_PEER`], the oldest of the peer holding the most past [`TOTAL`].
    fn bound(&mut self, name: &ServerName<'static>) {
        let own = self.by_name.get(name).map_or(0, |peer| peer.tickets.len());
        let from = match (own > PER_PEER, self.total > TOTAL) {
            (true, _) => self.by_name.get_mut(name),
            (false, true) => self.by_name.values_mut().max_by_key(|peer| peer.tickets.len()),
            (false, false) => None,
        };
        if from.and_then(|peer| peer.tickets.pop_front()).is_some() {
            self.total -= 1;
        }
    }
}

impl Tickets {
    fn peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        // A panic while holding the lock leaves whole entries behind: keep using them.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.peers().entry(server_name).kx_hint = Some(group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.peers().by_name.get(server_name).and_then(|peer| peer.kx_hint)
    }

    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut peers = self.peers();
        peers.entry(server_name.clone()).tickets.push_back(value);
        peers.total += 1;
        peers.bound(&server_name);
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        let mut peers = self.peers();
        let taken = peers.by_name.get_mut(server_name).and_then(|peer| peer.tickets.pop_back());
        if taken.is_some() {
            peers.total -= 1;
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::{ClientConnection, Connection, ServerConnection, client::Resumption};

    use super::*;
    use crate::{identity::Identity, tls};

    fn name(octet: u8) -> ServerName<'static> {
        ServerName::IpAddress(std::net::Ipv4Addr::new(10, 0, 0, octet).into())
    }

    /// Tickets held for `name`, and for all servers together.
    fn held(tickets: &Tickets, name: &ServerName<'static>) -> (usize, usize) {
        let peers = tickets.peers();
        let total = peers.by_name.values().map(|peer| peer.tickets.len()).sum::<usize>();
        assert_eq!(total, peers.total, "the count kept is off");
        (peers.by_name.get(name).map_or(0, |peer| peer.tickets.len()), total)
    }

    /// A client keeping its tickets in `tickets` and a server, both of the proxies' own
    /// configurations, with certificates of a test CA.
    fn configs(tickets: &Arc<Tickets>) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        let ca = tls::test_ca::TestCa::new("tickets");
        let (client, server) =
            (Identity::new("cluster.local", "shop", "cart"), Identity::new("cluster.local", "shop", "web"));
        let mut client_config =
            tls::client_config(&ca.issue(&client), &server.clone().into()).unwrap().as_ref().clone();
        client_config.resumption = Resumption::store(tickets.clone());
        (Arc::new(client_config), tls::server_config(&ca.issue(&server)).unwrap())
    }

    /// A TLS handshake in memory, until the server's tickets have reached the client.
    fn handshake(
        client: &Arc<rustls::ClientConfig>,
        server: &Arc<rustls::ServerConfig>,
        name: ServerName<'static>,
    ) {
        let mut client = Connection::Client(ClientConnection::new(client.clone(), name).unwrap());
        let mut server = Connection::Server(ServerConnection::new(server.clone()).unwrap());
        while client.is_handshaking() || server.is_handshaking() || server.wants_write() {
            transfer(&mut client, &mut server);
            transfer(&mut server, &mut client);
        }
    }

    fn transfer(from: &mut Connection, to: &mut Connection) {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let mut unread = &bytes[..];
        while !unread.is_empty() {
            to.read_tls(&mut unread).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    #[test]
    fn a_busy_peer_keeps_its_tickets_up_to_a_bound_and_all_peers_up_to_rustls_default() {
        let tickets = Arc::new(Tickets::default());
        let (client, server) = configs(&tickets);
        // The first connection brings two tickets; each after it takes one and brings two.
        for connections in 1..=PER_PEER + 4 {
            handshake(&client, &server, name(1));
            assert_eq!(held(&tickets, &name(1)).0, (connections + 1).min(PER_PEER));
        }
        // Busy peers together: the most any one holds gives way, so each keeps its share.
        let peers = TOTAL / PER_PEER + 1;
        for octet in 2..=u8::try_from(peers).unwrap() {
            for _ in 0..PER_PEER {
                handshake(&client, &server, name(octet));
            }
        }
        assert_eq!(held(&tickets, &name(1)).1, TOTAL);
        for octet in 1..=u8::try_from(peers).unwrap() {
            let (own, _) = held(&tickets, &name(octet));
            assert!(own >= TOTAL / peers - 1, "peer {octet} was left {own} of {TOTAL}");
        }
        // Past its peers, the first server goes with its tickets.
        for octet in u8::try_from(peers).unwrap() + 1..=u8::try_from(PEERS).unwrap() {
            handshake(&client, &server, name(octet));
        }
        let before = held(&tickets, &name(1));
        handshake(&client, &server, name(u8::try_from(PEERS).unwrap() + 1));
        let (first, total) = held(&tickets, &name(1));
        assert_eq!(first, 0, "the first server is forgotten");
        assert_eq!(
            total,
            before.1 - before.0 + 2,
            "its tickets left the count, the new server's two joined it"
        );
    }

    #[test]
    fn past_its_peers_the_server_added_first_is_forgotten() {
        let tickets = Tickets::default();
        for octet in 0..=u8::try_from(PEERS).unwrap() {
            tickets.set_kx_hint(name(octet), NamedGroup::X25519);
        }
        assert_eq!(tickets.kx_hint(&name(0)), None, "the first server is forgotten");
        assert_eq!(tickets.kx_hint(&name(1)), Some(NamedGroup::X25519));
        assert_eq!(tickets.kx_hint(&name(u8::try_from(PEERS).unwrap())), Some(NamedGroup::X25519));
        // A server known already is not added again.
        tickets.set_kx_hint(name(1), NamedGroup::secp256r1);
        assert_eq!(tickets.kx_hint(&name(2)), Some(NamedGroup::X25519));
        assert_eq!(tickets.peers().added.len(), PEERS);
    }
}
