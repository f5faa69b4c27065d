//! Hash maps keyed by what the process itself chose (5-tuples, addresses already admitted).

use std::collections::HashMap;

/// A `HashMap` with foldhash's fast, randomly seeded hasher: much cheaper than SipHash on the
/// small keys of the data path, and still keyed per process.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
