//! A phone whose NAT rebinds its port mid-session keeps its session, with no new handshake:
//! its datagrams now come from a new address, the kernel's SO_REUSEPORT hash may give them to
//! another worker, and that worker hands them to the owner its connection ID names (before its
//! own endpoint could answer with a stateless reset).

use std::net::UdpSocket;

use shake_proto::Verdict;
use shake_testkit::phone::Phone;
use shake_testkit::tokens::token;
use shake_testkit::world::{World, WorldSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_rebinding_its_port_keeps_its_session_across_workers() {
    let world =
        World::start(WorldSettings { envelopes: 100_000, ..WorldSettings::default() }).await;
    let mut phone = Phone::connect(&world).await;
    phone.hello(token(21, 3600)).await.unwrap();
    phone.shake(1, 0);
    assert_eq!(phone.outcome().await.unwrap().verdict, Verdict::Forwarded);
    let handshakes = world.metric("shake_edge_handshakes_total{outcome=\"accepted\"}");

    // Rebind to a fresh port until a datagram has crossed between the workers (each new port
    // has about one chance in two to land on the other of the edge's two workers).
    let mut seq = 1;
    for _ in 0..16 {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        phone.rebind(socket);
        for _ in 0..3 {
            phone.shake(1, seq);
            let outcome = phone.outcome().await.unwrap();
            assert_eq!(outcome.seq, seq);
            assert!(matches!(
                outcome.verdict,
                Verdict::Forwarded | Verdict::NoLuck | Verdict::SlowDown { .. }
            ));
            seq += 1;
        }
        // The loop publishes its counters every 100 ms: wait until they cover these shakes.
        world.wait_for_metric("shake_edge_datagrams_total{direction=\"in\"}", seq as f64).await;
        if world.metric("shake_edge_datagrams_total{direction=\"forwarded_out\"}") > 0.0 {
            break;
        }
    }
    assert!(
        world.metric("shake_edge_datagrams_total{direction=\"forwarded_out\"}") > 0.0,
        "16 rebinds never reached the other worker:\n{}",
        world.scrape()
    );
    // The same session all along: no new handshake, still one phone, nothing closed.
    assert_eq!(world.metric("shake_edge_handshakes_total{outcome=\"accepted\"}"), handshakes);
    assert_eq!(world.metric("shake_edge_phones"), 1.0);
    assert_eq!(world.metric_family("shake_edge_sessions_closed_total"), 0.0);
    assert!(phone.conn.close_reason().is_none());
}
