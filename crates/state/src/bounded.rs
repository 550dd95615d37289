//! Reading the persistent tables without trusting a length prefix.
//! `imbl`'s own `Deserialize` reserves room for as many entries as the
//! input *says* it holds: harmless in JSON (no lengths), but a binary
//! snapshot whose length prefix is damaged or hostile would make it
//! reserve terabytes and abort the process. These read entry by entry,
//! so memory follows the bytes actually there.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// For `#[serde(deserialize_with = "bounded::ordmap")]`.
pub(crate) fn ordmap<'de, D, K, V>(d: D) -> Result<imbl::OrdMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct Entries<K, V>(PhantomData<(K, V)>);
    impl<'de, K, V> Visitor<'de> for Entries<K, V>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        type Value = imbl::OrdMap<K, V>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut out = imbl::OrdMap::new();
            while let Some((k, v)) = access.next_entry()? {
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Entries(PhantomData))
}

/// For `#[serde(deserialize_with = "bounded::vector")]`.
pub(crate) fn vector<'de, D, T>(d: D) -> Result<imbl::Vector<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Clone,
{
    struct Items<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de> + Clone> Visitor<'de> for Items<T> {
        type Value = imbl::Vector<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut out = imbl::Vector::new();
            while let Some(item) = access.next_element()? {
                out.push_back(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Items(PhantomData))
}
