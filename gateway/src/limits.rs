//! Connection permits: one slot of the total connection limit plus, when configured, one slot of
//! the client address's own limit. A permit lives as long as the client connection (it moves
//! into the tunnel on upgrade), and dropping it frees both slots.
//!
//! The per-address count is keyed by the TCP peer address, never by `X-Forwarded-For`, which a
//! client can write itself. Behind a load balancer every client shares its address, so the
//! per-address limit belongs on gateways that face clients directly.
//!
//! An IPv6 client is counted by its /64 network, not its address: one host is routinely given a
//! whole /64 and can pick a fresh address from it for every connection. (IPv4 clients seen
//! through NAT64 translation and link-local clients are the exceptions; see [`client_key`].)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedSemaphorePermit;

/// Open client connections per address, bounded by `max`.
///
/// The map holds one entry per address with at least one open connection, so it is bounded by
/// the total connection limit.
#[derive(Debug)]
pub struct IpLimiter {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// The address already holds its allowed number of connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtLimit;

/// One connection's share of its address's limit; released on drop.
#[derive(Debug)]
pub struct IpSlot {
    limiter: Arc<IpLimiter>,
    ip: IpAddr,
}

impl IpLimiter {
    /// A limiter allowing `max` connections per address (`0`: no per-address limit).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(IpLimiter {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `ip`: `Ok(None)` when there is no per-address limit, [`AtLimit`] when
    /// the address is at its limit.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpSlot>, AtLimit> {
        if self.max == 0 {
            return Ok(None);
        }
        let ip = client_key(ip);
        let Ok(mut counts) = self.counts.lock() else {
            // Poisoned only if a holder panicked mid-update; fail open rather than lock
            // everyone out (the total limit still holds).
            return Ok(None);
        };
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return Err(AtLimit);
        }
        *count += 1;
        Ok(Some(IpSlot {
            limiter: self.clone(),
            ip,
        }))
    }

    /// Open connections counted for `ip` (for IPv6, its /64).
    pub fn open(&self, ip: IpAddr) -> usize {
        self.counts
            .lock()
            .ok()
            .and_then(|c| c.get(&client_key(ip)).copied())
            .unwrap_or(0)
    }
}

/// What a client's connections are counted under: its IPv4 address (also when it arrives as
/// `::ffff:a.b.c.d` on a dual-stack socket, or translated into `64:ff9b::a.b.c.d`), its whole
/// address when it is link-local (`fe80::/10`, where every host shares one /64), or else its
/// IPv6 /64 network.
fn client_key(ip: IpAddr) -> IpAddr {
    let v6 = match ip.to_canonical() {
        IpAddr::V6(v6) => v6,
        v4 => return v4,
    };
    let bits = u128::from(v6);
    const NAT64: u128 = 0x0064_ff9b_u128 << 96;
    if bits >> 32 == NAT64 >> 32 {
        return IpAddr::V4((bits as u32).into());
    }
    if v6.segments()[0] & 0xffc0 == 0xfe80 {
        return IpAddr::V6(v6);
    }
    IpAddr::V6((bits & !u128::from(u64::MAX)).into())
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.limiter.counts.lock() {
            if let Some(count) = counts.get_mut(&self.ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(&self.ip);
                }
            }
        }
    }
}

/// What one client connection holds against the gateway's limits.
#[derive(Debug)]
pub struct ConnectionPermit {
    _total: OwnedSemaphorePermit,
    _ip: Option<IpSlot>,
}

impl ConnectionPermit {
    /// Bundles a slot of the total limit with the address's slot.
    pub fn new(total: OwnedSemaphorePermit, ip: Option<IpSlot>) -> Self {
        ConnectionPermit {
            _total: total,
            _ip: ip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_slots_are_counted_and_released() {
        let limiter = IpLimiter::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = limiter.acquire(a).unwrap();
        let _second = limiter.acquire(a).unwrap();
        assert!(limiter.acquire(a).is_err());
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert!(limiter.acquire(mapped).is_err(), "same client via IPv6");
        assert!(limiter.acquire(b).unwrap().is_some());
        drop(first);
        assert_eq!(limiter.open(a), 1);
        assert!(limiter.acquire(a).unwrap().is_some());
        assert!(IpLimiter::new(0).acquire(a).unwrap().is_none());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network() {
        let limiter = IpLimiter::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = limiter.acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = limiter.acquire(ip("2001:db8:1:2:ffff:0:0:9")).unwrap();
        assert!(
            limiter.acquire(ip("2001:db8:1:2:abcd::7")).is_err(),
            "a fresh address in the same /64 is the same client"
        );
        assert_eq!(limiter.open(ip("2001:db8:1:2::42")), 2);
        assert!(
            limiter.acquire(ip("2001:db8:1:3::1")).unwrap().is_some(),
            "the next /64 is someone else"
        );
        // IPv4 addresses stay whole, also written as IPv4-mapped or NAT64-translated IPv6.
        let _c = limiter.acquire(ip("10.0.0.1")).unwrap();
        let _d = limiter.acquire(ip("::ffff:10.0.0.1")).unwrap();
        assert!(limiter.acquire(ip("64:ff9b::10.0.0.1")).is_err());
        assert!(limiter.acquire(ip("::ffff:10.0.0.2")).unwrap().is_some());
        assert!(limiter.acquire(ip("64:ff9b::10.0.0.3")).unwrap().is_some());
        // Link-local hosts share fe80::/64: each counts alone.
        let _e = limiter.acquire(ip("fe80::1")).unwrap();
        let _f = limiter.acquire(ip("fe80::1")).unwrap();
        assert!(limiter.acquire(ip("fe80::1")).is_err());
        assert!(limiter.acquire(ip("fe80::2")).unwrap().is_some());
    }
}
