//! IPv4/IPv6 address and CIDR matching (the `remote_addrs` route field and
//! the `ipmatch` vars operator), in the spirit of lua-resty-ipmatcher.

use std::net::IpAddr;

/// A set of IPv4 and IPv6 networks. An address without a prefix length is a
/// network of one address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpMatcher {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpMatcher {
    /// Parses a list of addresses and CIDRs; the error names the first
    /// invalid entry (`invalid ip address: <entry>`).
    pub fn new<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        Self::new_indexed(items).map_err(|(_, e)| e)
    }

    /// Like [`IpMatcher::new`], also giving the index of the invalid entry.
    pub(crate) fn new_indexed<S: AsRef<str>>(items: &[S]) -> Result<Self, (usize, String)> {
        let mut m = IpMatcher::default();
        for (i, item) in items.iter().enumerate() {
            m.add(item.as_ref()).map_err(|e| (i, e))?;
        }
        Ok(m)
    }

    /// True when no network was added (such a matcher matches nothing).
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Adds one address or CIDR.
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        let invalid = || format!("invalid ip address: {text}");
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => {
                if b.is_empty() || b.len() > 3 || !b.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(invalid());
                }
                (a, Some(b.parse::<u32>().map_err(|_| invalid())?))
            }
            None => (text, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| invalid())?;
        match ip {
            IpAddr::V4(v4) => {
                let bits = bits.unwrap_or(32);
                if bits > 32 {
                    return Err(invalid());
                }
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                self.v4.push((u32::from(v4) & mask, mask));
            }
            IpAddr::V6(v6) => {
                let bits = bits.unwrap_or(128);
                if bits > 128 {
                    return Err(invalid());
                }
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                self.v6.push((u128::from(v6) & mask, mask));
            }
        }
        Ok(())
    }

    /// True when `ip` is inside any of the networks. An IPv4-mapped IPv6
    /// address (`::ffff:a.b.c.d`, as dual-stack sockets report IPv4 peers)
    /// also matches the IPv4 networks.
    pub fn matches(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.contains_v4(u32::from(v4)),
            IpAddr::V6(v6) => {
                let n = u128::from(v6);
                if self.v6.iter().any(|&(net, mask)| n & mask == net) {
                    return true;
                }
                match v6.to_ipv4_mapped() {
                    Some(v4) => self.contains_v4(u32::from(v4)),
                    None => false,
                }
            }
        }
    }

    /// Parses `text` as an address and tests it; unparsable text never matches.
    pub fn matches_str(&self, text: &str) -> bool {
        match text.trim().parse::<IpAddr>() {
            Ok(ip) => self.matches(ip),
            Err(_) => false,
        }
    }

    fn contains_v4(&self, n: u32) -> bool {
        self.v4.iter().any(|&(net, mask)| n & mask == net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_cidr_and_single() {
        let m = IpMatcher::new(&["10.0.0.0/8", "192.168.1.7", "172.16.5.9/16"]).unwrap();
        assert!(m.matches_str("10.200.3.4"));
        assert!(!m.matches_str("11.0.0.1"));
        assert!(m.matches_str("192.168.1.7"));
        assert!(!m.matches_str("192.168.1.8"));
        assert!(m.matches_str("172.16.0.1"));
        assert!(!m.matches_str("::1"));
        assert!(!m.matches_str("not-an-ip"));
        assert!(m.matches_str("::ffff:10.1.2.3"));
    }

    #[test]
    fn v6_cidr() {
        let m = IpMatcher::new(&["2001:db8::/32", "::1", "0.0.0.0/0"]).unwrap();
        assert!(m.matches_str("2001:db8:1::5"));
        assert!(!m.matches_str("2001:db9::1"));
        assert!(m.matches_str("::1"));
        assert!(m.matches_str("8.8.8.8"));
        let all6 = IpMatcher::new(&["::/0"]).unwrap();
        assert!(all6.matches_str("fe80::1"));
        assert!(!all6.matches_str("1.2.3.4"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4/33",
            "::1/129",
            "1.2.3.4/",
            "1.2.3.4/-1",
            "x/8",
            "1.2.3.4/8/8",
        ] {
            assert!(IpMatcher::new(&[bad]).is_err(), "{bad}");
        }
        assert_eq!(
            IpMatcher::new_indexed(&["1.1.1.1", "bad"]).unwrap_err().0,
            1
        );
        assert_eq!(
            IpMatcher::new(&["1.1.1.1", "bad"]).unwrap_err(),
            "invalid ip address: bad"
        );
        assert!(IpMatcher::default().is_empty());
        assert!(!IpMatcher::new(&["::1"]).unwrap().is_empty());
    }
}
