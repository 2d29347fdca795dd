//! Which rank this process is, from the variables torchrun sets (and `--nproc-per-node`,
//! srun or mpirun wrappers export): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
//! and the collective the ranks train through.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use temper_train::{HostCollective, RendezvousConfig, Single, Tcp};

/// This process's place in a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rank {
    pub rank: usize,
    pub world: usize,
    /// The GPU this rank uses.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl Rank {
    /// A process that no launcher started.
    pub fn alone() -> Rank {
        Rank {
            rank: 0,
            world: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 0,
        }
    }

    pub fn is_lead(&self) -> bool {
        self.rank == 0
    }

    pub fn rendezvous(&self, timeout: Duration) -> RendezvousConfig {
        RendezvousConfig {
            rank: self.rank,
            world: self.world,
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
            timeout,
        }
    }
}

/// Set by torchrun for its workers when its agent's store listens on MASTER_PORT.
const AGENT_STORE: &str = "TORCHELASTIC_USE_AGENT_STORE";

/// True when a launcher has set RANK or WORLD_SIZE.
pub fn launched() -> bool {
    std::env::var_os("RANK").is_some() || std::env::var_os("WORLD_SIZE").is_some()
}

/// Reads the rank variables through `get` (the environment, or a test's map).
pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Rank> {
    if get("RANK").is_none() && get("WORLD_SIZE").is_none() {
        return Ok(Rank::alone());
    }
    let num = |name: &str| -> Result<Option<usize>> {
        match get(name) {
            None => Ok(None),
            Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                anyhow!("{name}=`{v}` is not a whole number (set by the launcher that started this rank)")
            }),
        }
    };
    let need = |name: &str, v: Option<usize>| {
        v.ok_or_else(|| {
            anyhow!("{name} is not set, but RANK or WORLD_SIZE is: a launcher must set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (torchrun does)")
        })
    };
    let rank = need("RANK", num("RANK")?)?;
    let world = need("WORLD_SIZE", num("WORLD_SIZE")?)?;
    if world == 0 || rank >= world {
        bail!("RANK={rank} must be below WORLD_SIZE={world}");
    }
    let local_rank = need("LOCAL_RANK", num("LOCAL_RANK")?)?;
    let (master_addr, master_port) = if world == 1 {
        (
            get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            num("MASTER_PORT")?.unwrap_or(0),
        )
    } else {
        let addr = get("MASTER_ADDR").ok_or_else(|| {
            anyhow!("MASTER_ADDR is not set: every rank needs rank 0's host name or address")
        })?;
        let port = need("MASTER_PORT", num("MASTER_PORT")?)?;
        (addr, port)
    };
    let master_port = u16::try_from(master_port)
        .map_err(|_| anyhow!("MASTER_PORT={master_port} is not a TCP port (1-65535)"))?;
    // torchrun's agent keeps its own store listening on MASTER_PORT (and says so to its
    // workers with TORCHELASTIC_USE_AGENT_STORE=True): temper's rendezvous takes the next port.
    let master_port = if world > 1 && get(AGENT_STORE).as_deref() == Some("True") {
        master_port.checked_add(1).ok_or_else(|| {
            anyhow!("MASTER_PORT={master_port}: under torchrun temper listens on MASTER_PORT + 1, which is not a TCP port; choose a lower --master-port")
        })?
    } else {
        master_port
    };
    Ok(Rank {
        rank,
        world,
        local_rank,
        master_addr,
        master_port,
    })
}

/// The rank this process is, from its environment.
pub fn from_env() -> Result<Rank> {
    from_vars(|name| std::env::var(name).ok())
}

/// The `dist_backend` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistBackend {
    /// NCCL on CUDA, TCP on the CPU; nothing at world 1.
    Auto,
    /// Gradients through rank 0 over TCP (any device).
    Tcp,
    /// Gradients by NCCL (CUDA only); also at world 1, to test NCCL on one GPU.
    Nccl,
}

impl DistBackend {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DistBackend::Auto),
            "tcp" => Ok(DistBackend::Tcp),
            "nccl" => Ok(DistBackend::Nccl),
            other => bail!("dist_backend `{other}` is not one of auto, nccl, tcp"),
        }
    }
}

/// A host-side collective: nothing at world 1, else rendezvous and TCP.
pub fn host_collective(r: &Rank, timeout: Duration) -> Result<Box<dyn HostCollective>> {
    if r.world == 1 {
        return Ok(Box::new(Single));
    }
    Ok(Box::new(join(r, timeout)?))
}

/// Rendezvous with the other ranks.
pub fn join(r: &Rank, timeout: Duration) -> Result<Tcp> {
    Tcp::connect(&r.rendezvous(timeout)).with_context(|| {
        format!(
            "rank {} of {}: joining the job at {}:{}",
            r.rank, r.world, r.master_addr, r.master_port
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<Rank> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_variables_make_a_rank() {
        let r = read(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ])
        .expect("rank");
        assert_eq!(
            r,
            Rank {
                rank: 3,
                world: 8,
                local_rank: 1,
                master_addr: "node0".into(),
                master_port: 29500
            }
        );
        assert_eq!(read(&[]).expect("alone"), Rank::alone());
    }

    #[test]
    fn under_torchrun_the_rendezvous_takes_the_port_after_the_agents_store() {
        let vars = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
        ];
        let mut torchrun = vars.to_vec();
        torchrun.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        assert_eq!(read(&torchrun).expect("rank").master_port, 29501);
        let mut no_store = vars.to_vec();
        no_store.push(("TORCHELASTIC_USE_AGENT_STORE", "False"));
        assert_eq!(read(&no_store).expect("rank").master_port, 29500);
        assert_eq!(read(&vars).expect("rank").master_port, 29500);
        let mut top = torchrun.clone();
        top[4] = ("MASTER_PORT", "65535");
        let e = read(&top).expect_err("no port above 65535").to_string();
        assert!(e.contains("MASTER_PORT + 1"), "{e}");
    }

    #[test]
    fn missing_or_bad_variables_are_named() {
        let e = read(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")])
            .expect_err("no master")
            .to_string();
        assert!(e.contains("MASTER_ADDR"), "{e}");
        let e = read(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")])
            .expect_err("rank too big")
            .to_string();
        assert!(e.contains("RANK=2 must be below WORLD_SIZE=2"), "{e}");
        let e = read(&[("RANK", "x"), ("WORLD_SIZE", "2")])
            .expect_err("not a number")
            .to_string();
        assert!(e.contains("RANK=`x`"), "{e}");
        let e = read(&[("RANK", "0"), ("WORLD_SIZE", "1")])
            .expect_err("no local rank")
            .to_string();
        assert!(e.contains("LOCAL_RANK is not set"), "{e}");
    }
}
