//! SWIM timing: the few knobs an operator may want, and how they map onto
//! foca's configuration. Why these defaults is written in docs/membership.md.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Membership protocol timing. Every field is in milliseconds so that the
/// TOML config file and the command line read the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwimConfig {
    /// How often this node probes one random member.
    pub probe_period_ms: u64,
    /// How long a direct probe may take before indirect probes are sent.
    pub probe_rtt_ms: u64,
    /// How many members are asked to probe on our behalf.
    pub indirect_probes: usize,
    /// How long a suspect member has to refute before it is declared dead.
    pub suspect_to_down_ms: u64,
    /// How often membership updates are gossiped outside the probe cycle.
    pub gossip_period_ms: u64,
    /// How many times each update is piggy-backed before it is dropped.
    pub max_transmissions: u8,
}

impl Default for SwimConfig {
    fn default() -> Self {
        Self {
            probe_period_ms: 300,
            probe_rtt_ms: 100,
            indirect_probes: 3,
            suspect_to_down_ms: 900,
            gossip_period_ms: 100,
            max_transmissions: 8,
        }
    }
}

/// A timing that cannot work; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("swim: {0}")]
    Invalid(&'static str),
}

impl SwimConfig {
    /// Checks the relations foca relies on (rtt < period, nothing zero).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.probe_period_ms == 0 || self.probe_rtt_ms == 0 || self.suspect_to_down_ms == 0 {
            return Err(ConfigError::Invalid("probe_period_ms, probe_rtt_ms and suspect_to_down_ms must be > 0"));
        }
        if self.probe_rtt_ms >= self.probe_period_ms {
            return Err(ConfigError::Invalid("probe_rtt_ms must be smaller than probe_period_ms"));
        }
        if self.indirect_probes == 0 || self.max_transmissions == 0 || self.gossip_period_ms == 0 {
            return Err(ConfigError::Invalid("indirect_probes, max_transmissions and gossip_period_ms must be > 0"));
        }
        Ok(())
    }

    /// The foca configuration these timings stand for.
    pub fn to_foca(&self) -> Result<foca::Config, ConfigError> {
        self.validate()?;
        let nz = |n: usize| NonZeroUsize::new(n).ok_or(ConfigError::Invalid("zero"));
        let mut c = foca::Config::simple();
        c.probe_period = Duration::from_millis(self.probe_period_ms);
        c.probe_rtt = Duration::from_millis(self.probe_rtt_ms);
        c.num_indirect_probes = nz(self.indirect_probes)?;
        c.max_transmissions = NonZeroU8::new(self.max_transmissions).ok_or(ConfigError::Invalid("zero"))?;
        c.suspect_to_down_after = Duration::from_millis(self.suspect_to_down_ms);
        // Dead identities are remembered for a day: a restarted node comes
        // back under a new generation, so it never needs the old one freed.
        c.remove_down_after = Some(Duration::from_secs(24 * 3600));
        c.max_packet_size = nz(1400)?;
        // A member wrongly declared dead learns it and rejoins at once.
        c.notify_down_members = true;
        c.periodic_announce = Some(foca::PeriodicParams { frequency: Duration::from_secs(5), num_members: nz(1)? });
        // Heals partitions: dead members are told they are dead, and rejoin.
        c.periodic_announce_to_down_members =
            Some(foca::PeriodicParams { frequency: Duration::from_secs(3), num_members: nz(1)? });
        c.periodic_gossip =
            Some(foca::PeriodicParams { frequency: Duration::from_millis(self.gossip_period_ms), num_members: nz(3)? });
        Ok(c)
    }
}
