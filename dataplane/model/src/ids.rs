//! Newtype ids. Fixed-width integers with the width Kafka uses on the wire, so
//! conversions at the protocol boundary are lossless.

use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

id_newtype!(
    /// A broker in the cluster.
    NodeId(i32)
);
id_newtype!(
    /// One data-plane core (executor) of a node.
    ShardId(u32)
);
id_newtype!(
    /// A partition index within a topic.
    PartitionId(i32)
);
id_newtype!(
    /// A leader epoch: bumped by the controller on every leadership change.
    Epoch(i32)
);
id_newtype!(
    /// Milliseconds since the Unix epoch, as Kafka timestamps are.
    TimestampMs(i64)
);
id_newtype!(
    /// A position in a partition's log, counted in records.
    Offset(i64)
);

impl Offset {
    /// The offset `n` records after this one.
    pub fn plus(self, n: i64) -> Offset {
        Offset(self.0 + n)
    }
}

/// Topic + partition: the name of one log.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ntp {
    pub topic: String,
    pub partition: PartitionId,
}

impl Ntp {
    pub fn new(topic: impl Into<String>, partition: i32) -> Ntp {
        Ntp {
            topic: topic.into(),
            partition: PartitionId(partition),
        }
    }

    /// The directory name of this partition's log, as Kafka names it.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition.0)
    }
}

impl fmt::Display for Ntp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_dir_name_is_kafka_style() {
        assert_eq!(Ntp::new("orders", 7).dir_name(), "orders-7");
        assert_eq!(Ntp::new("orders", 7).to_string(), "orders/7");
    }

    #[test]
    fn offset_arithmetic() {
        assert_eq!(Offset(10).plus(5), Offset(15));
        assert!(Offset(1) < Offset(2));
    }
}
