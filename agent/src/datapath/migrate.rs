//! Carrying a pinned datapath across ABI versions (an agent upgrade or rollback), so capture
//! never pauses. aya reuses any map pinned under the map's name without looking at it, so every
//! install first compares each pinned map with the new object's definition of it:
//! - the same layout: kept, entries and all (the pods enrolled, the proxy's listeners, the
//!   original destinations of open connections), and the new programs use it;
//! - another layout: handled as [`carry`] says for that map — rebuilt empty, or its slots
//!   copied, or, for state only a converter written for that change could carry, the install is
//!   refused before anything is touched, and the old datapath keeps running.
//!
//! Maps the new object no longer defines are unpinned once every link runs the new programs.
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData};
use aya_obj::maps::PinningType;
use weft_ebpf_common::{ABI_VERSION, ConfigSlot, map, pin};

use super::{Error, io_error};

/// What an upgrade does with a pinned map whose layout changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carry {
    /// Rebuilt empty: the kernel refills it. Costs what connections open across the upgrade
    /// had recorded (their original destination), including those opened while the links
    /// switch one by one (a new connect hook may record where an old getsockopt hook looks),
    /// or the counters' history.
    Rebuild,
    /// An array of `u32` settings indexed by [`ConfigSlot`]: the slots both layouts have are
    /// copied.
    CopySlots,
    /// State the agent or the proxy wrote and cannot rewrite in time (enrollment, the proxy's
    /// listener sockets, its trusted cgroups): changing its layout needs a converter here.
    Refuse,
}

fn carry(name: &str) -> Carry {
    match name {
        map::ORIG_BY_COOKIE
        | map::ORIG_BY_PEER
        | map::DIRECT
        | map::PROXY_BINDS
        | map::COUNTERS
        | map::NODE => Carry::Rebuild,
        map::CONFIG => Carry::CopySlots,
        _ => Carry::Refuse,
    }
}

/// `BPF_MAP_TYPE_ARRAY` and `BPF_MAP_TYPE_PERCPU_ARRAY` (kernel UAPI numbers): their size is
/// part of their meaning (an index past the end is refused). A hash map's capacity is not.
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const ARRAY_TYPES: [u32; 2] = [BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY];

/// Prefix of a rebuilt map's old pin while the install runs: put back if the load fails,
/// removed once it succeeded. (bpffs refuses dots in names.)
const ASIDE: &str = "aside-";

/// What an install does to the pinned maps, decided before it changes any of them.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// The ABI version of the pinned datapath, if one is pinned.
    pub pinned_abi: Option<u32>,
    /// Pinned maps with a new layout, set aside before the load so it creates them afresh.
    rebuilt: Vec<String>,
    /// The pinned settings, copied into the new [`map::CONFIG`] when its layout changed.
    config_slots: Option<Vec<u32>>,
    /// Pins of maps the new object does not define.
    stale: Vec<PathBuf>,
}

impl Plan {
    /// Compares every map pinned under `root` with `object`'s definitions. Changes nothing.
    pub fn new(root: &Path, object: &[u8]) -> Result<Self, Error> {
        let maps_dir = root.join(pin::MAPS);
        let mut plan = Self { pinned_abi: pinned_abi(&maps_dir)?, ..Self::default() };
        if plan.pinned_abi.is_none() {
            return Ok(plan);
        }
        let object = aya_obj::Object::parse(object).map_err(|error| Error::Parse(error.to_string()))?;
        let defined: Vec<_> =
            object.maps.iter().filter(|(_, def)| matches!(def.pinning(), PinningType::ByName)).collect();
        for (name, def) in &defined {
            let path = maps_dir.join(name);
            if !path.exists() {
                continue;
            }
            let pinned = MapData::from_pin(&path)
                .and_then(|data| data.info())
                .map_err(|source| Error::Pinned { name: (*name).clone(), source })?;
            let pinned_type = pinned.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
            let same = pinned_type == def.map_type()
                && pinned.key_size() == def.key_size()
                && pinned.value_size() == def.value_size()
                && pinned.map_flags() == def.map_flags()
                && (!ARRAY_TYPES.contains(&def.map_type()) || pinned.max_entries() == def.max_entries());
            if same {
                continue;
            }
            match carry(name) {
                Carry::Rebuild => {}
                Carry::CopySlots => plan.config_slots = Some(config_slots(&path)?),
                Carry::Refuse => {
                    return Err(Error::Incompatible {
                        root: root.display().to_string(),
                        pinned: plan.pinned_abi.unwrap_or_default(),
                        map: (*name).clone(),
                    });
                }
            }
            plan.rebuilt.push((*name).clone());
        }
        let entries = std::fs::read_dir(&maps_dir).map_err(|source| io_error(&maps_dir, source))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !defined.iter().any(|(defined, _)| **defined == name) {
                plan.stale.push(entry.path());
            }
        }
        Ok(plan)
    }

    /// Before the load: moves the pins of the maps to rebuild aside (bpffs renames). The
    /// programs still attached keep using those maps until their links run the new programs.
    pub fn set_aside(&self, root: &Path) -> Result<(), Error> {
        for name in &self.rebuilt {
            let path = root.join(pin::MAPS).join(name);
            let aside = root.join(pin::MAPS).join(format!("{ASIDE}{name}"));
            std::fs::rename(&path, &aside).map_err(|source| io_error(&path, source))?;
        }
        Ok(())
    }

    /// After a failed load: the pins set aside go back (replacing any the load made), so the
    /// next install finds the datapath as it was.
    pub fn put_back(&self, root: &Path) {
        for name in &self.rebuilt {
            let path = root.join(pin::MAPS).join(name);
            let aside = root.join(pin::MAPS).join(format!("{ASIDE}{name}"));
            if let Err(error) = std::fs::rename(&aside, &path) {
                tracing::warn!(map = %name, %error, "could not restore the pin of a map set aside");
            }
        }
    }

    /// After the load: the settings the old datapath held, in the slots the new one has too.
    pub fn restore_config(&self, config: &mut Array<&mut MapData, u32>) -> Result<(), Error> {
        let Some(slots) = &self.config_slots else { return Ok(()) };
        for (slot, value) in slots.iter().enumerate().take(ConfigSlot::COUNT as usize) {
            let slot = u32::try_from(slot).expect("invariant: at most ConfigSlot::COUNT (a u32) slots");
            config.set(slot, value, 0).map_err(|source| Error::Map { name: map::CONFIG, source })?;
        }
        Ok(())
    }

    /// Once every link runs the new programs: unpins the maps only the old ones used, and says
    /// what the upgrade did.
    pub fn finish(&self, root: &Path) -> Result<(), Error> {
        let aside = self.rebuilt.iter().map(|name| root.join(pin::MAPS).join(format!("{ASIDE}{name}")));
        for path in self.stale.iter().cloned().chain(aside) {
            match std::fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error(&path, error));
                }
                _ => {}
            }
        }
        if let Some(pinned) = self.pinned_abi
            && (pinned != ABI_VERSION || !self.rebuilt.is_empty() || !self.stale.is_empty())
        {
            let removed: Vec<_> = self.stale.iter().filter_map(|path| path.file_name()).collect();
            tracing::info!(
                from = pinned,
                to = ABI_VERSION,
                rebuilt = ?self.rebuilt,
                ?removed,
                "carried the pinned datapath over to this agent's programs"
            );
        }
        Ok(())
    }
}

/// The ABI version recorded in the datapath pinned in `maps_dir`: `None` if nothing is pinned
/// there, 0 if maps are pinned but no settings say which version (an install that stopped
/// half-way): their layouts are checked all the same.
fn pinned_abi(maps_dir: &Path) -> Result<Option<u32>, Error> {
    let any_pinned = std::fs::read_dir(maps_dir).is_ok_and(|mut entries| entries.next().is_some());
    if !any_pinned {
        return Ok(None);
    }
    let path = maps_dir.join(map::CONFIG);
    if !path.exists() {
        return Ok(Some(0));
    }
    Ok(Some(config_slots(&path)?.first().copied().unwrap_or(0)))
}

/// Every slot of the pinned settings array at `path` (slot 0, [`ConfigSlot::AbiVersion`], in
/// every version).
fn config_slots(path: &Path) -> Result<Vec<u32>, Error> {
    let name = map::CONFIG;
    let map_error = |source| Error::Map { name, source };
    let data = MapData::from_pin(path).map_err(map_error)?;
    let config: Array<_, u32> = Array::try_from(Map::Array(data)).map_err(map_error)?;
    config.iter().collect::<Result<_, _>>().map_err(map_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_caches_and_counters_are_rebuilt_and_agent_or_proxy_state_is_never_dropped() {
        for name in
            [map::ORIG_BY_COOKIE, map::ORIG_BY_PEER, map::DIRECT, map::PROXY_BINDS, map::COUNTERS, map::NODE]
        {
            assert_eq!(carry(name), Carry::Rebuild, "{name}");
        }
        assert_eq!(carry(map::CONFIG), Carry::CopySlots);
        for name in [map::ENROLLED, map::LISTENERS, map::PROXY_CGROUPS, "WEFT_SOMETHING_NEW"] {
            assert_eq!(carry(name), Carry::Refuse, "{name}");
        }
    }
}
