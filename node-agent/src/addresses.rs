//! The pod addresses of a node: one each, given back when the pod's task
//! ends, however it ended. `petset_agent_pod_addresses_free` follows the
//! count, so a leak shows.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The free addresses of the node's pod subnet.
#[derive(Debug)]
pub struct Addresses {
    free: BTreeSet<Ipv4Addr>,
}

impl Addresses {
    /// Every host address of `subnet` free.
    pub fn new(subnet: ipnet::Ipv4Net) -> Self {
        let addresses = Addresses {
            free: subnet.hosts().collect(),
        };
        addresses.publish();
        addresses
    }

    fn publish(&self) {
        metrics::gauge!("petset_agent_pod_addresses_free").set(self.free.len() as f64);
    }

    /// How many are free.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// The lowest free address, now taken.
    pub fn take(&mut self) -> Option<Ipv4Addr> {
        let ip = self.free.pop_first();
        self.publish();
        ip
    }

    /// The highest free address, now taken for good (the node's DNS
    /// relay).
    pub fn take_last(&mut self) -> Option<Ipv4Addr> {
        let ip = self.free.pop_last();
        self.publish();
        ip
    }

    /// Gives `ip` back.
    pub fn give_back(&mut self, ip: Ipv4Addr) {
        self.free.insert(ip);
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_handed_out_once_and_come_back() {
        let mut a = Addresses::new("10.9.0.0/30".parse().unwrap());
        assert_eq!(a.free(), 2);
        let first = a.take().unwrap();
        let second = a.take().unwrap();
        assert_ne!(first, second);
        assert_eq!(a.take(), None);
        a.give_back(second);
        assert_eq!(a.take(), Some(second));
    }
}
