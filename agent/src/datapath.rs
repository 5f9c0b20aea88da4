//! The eBPF datapath: loads the kernel object built from `ebpf/`, attaches its programs, and reads
//! its counters. The only user-space writer of Weft's eBPF maps.

use std::{fs::File, io, path::Path};

use aya::{
    Ebpf, EbpfError,
    maps::{MapError, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
};
use weft_ebpf_common::{Counter, map, program};

/// The kernel object, built by this crate's build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-ebpf"));

/// Errors from loading, attaching or reading the datapath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object")]
    Load(#[source] EbpfError),
    #[error("eBPF program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("eBPF map {name} is missing from the object")]
    MissingMap { name: &'static str },
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("opening cgroup {path}")]
    Cgroup {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The loaded datapath. Dropping it detaches what it attached (pinning comes with the capture
/// work; until then the programs live as long as this value).
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads the embedded object into the kernel; attaches nothing yet.
    pub fn load() -> Result<Self, Error> {
        let ebpf = Ebpf::load(OBJECT).map_err(Error::Load)?;
        Ok(Self { ebpf })
    }

    /// Attaches the connect4 program to the cgroup v2 directory at `cgroup`, so it sees every
    /// IPv4 `connect()` made by processes in that cgroup or below it.
    pub fn attach_connect4(&mut self, cgroup: &Path) -> Result<(), Error> {
        let name = program::CONNECT4;
        let cgroup_file = File::open(cgroup)
            .map_err(|source| Error::Cgroup { path: cgroup.display().to_string(), source })?;
        let prog: &mut CgroupSockAddr = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram { name })?
            .try_into()
            .map_err(|source| Error::Program { name, source })?;
        prog.load().map_err(|source| Error::Program { name, source })?;
        prog.attach(cgroup_file, CgroupAttachMode::Single)
            .map_err(|source| Error::Program { name, source })?;
        Ok(())
    }

    /// Reads one counter, summed across CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, Error> {
        let name = map::COUNTERS;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(name).ok_or(Error::MissingMap { name })?)
                .map_err(|source| Error::Map { name, source })?;
        let per_cpu = counters.get(&(counter as u32), 0).map_err(|source| Error::Map { name, source })?;
        Ok(per_cpu.iter().sum())
    }
}
