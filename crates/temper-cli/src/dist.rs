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

/// True when a launcher has set RANK or WORLD_SIZE (or srun started this process as a task).
pub fn launched() -> bool {
    std::env::var_os("RANK").is_some()
        || std::env::var_os("WORLD_SIZE").is_some()
        || slurm_task(&|n: &str| std::env::var(n).ok())
}

/// True inside a task srun started (a job step: SLURM_STEP_ID and SLURM_PROCID are set), not
/// in the batch script or an salloc shell, whose SLURM_NTASKS names tasks still to start.
fn slurm_task(get: &dyn Fn(&str) -> Option<String>) -> bool {
    get("SLURM_PROCID").is_some() && get("SLURM_STEP_ID").is_some()
}

/// The launcher recognised (when not torchrun) and the variables it implies.
pub type Implied = (Option<&'static str>, Vec<(String, String)>);

/// The first host of a Slurm node list: `node[01-04,07],gpu5` -> `node01`.
pub fn first_slurm_host(list: &str) -> Option<String> {
    let list = list.trim();
    let end = list
        .char_indices()
        .scan(0i32, |depth, (i, c)| {
            match c {
                '[' => *depth += 1,
                ']' => *depth -= 1,
                _ => {}
            }
            Some((i, c, *depth))
        })
        .find(|&(_, c, d)| c == ',' && d == 0)
        .map_or(list.len(), |(i, _, _)| i);
    let first = &list[..end];
    match first.split_once('[') {
        None if first.is_empty() => None,
        None => Some(first.to_string()),
        Some((prefix, rest)) => {
            let range = rest.trim_end_matches(']');
            let lo = range.split([',', '-']).next()?;
            let suffix = first.rsplit_once(']').map_or("", |(_, s)| s);
            Some(format!("{prefix}{lo}{suffix}"))
        }
    }
}

/// The torchrun variables a Slurm task (srun) or a Kubeflow PyTorchJob pod implies, for the
/// ones its launcher does not set: Slurm's SLURM_PROCID, SLURM_STEP_NUM_TASKS (else
/// SLURM_NTASKS) and SLURM_LOCALID, the first host of SLURM_JOB_NODELIST as MASTER_ADDR and,
/// unless MASTER_PORT is set, a port from the job id (20000 + SLURM_JOB_ID % 10000, the same
/// on every node); Kubeflow sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT but no
/// LOCAL_RANK (one process per pod): it is RANK modulo LOCAL_WORLD_SIZE or PET_NPROC_PER_NODE
/// when one is set, else 0. Returns the name of the launcher recognised.
pub fn launcher_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Implied> {
    let mut out: Vec<(String, String)> = Vec::new();
    if get("RANK").is_none() && get("WORLD_SIZE").is_none() && slurm_task(get) {
        let need = |name: &str| {
            get(name).ok_or_else(|| anyhow!("{name} is not set in this Slurm task (srun sets it)"))
        };
        out.push(("RANK".into(), need("SLURM_PROCID")?));
        let world = get("SLURM_STEP_NUM_TASKS")
            .or_else(|| get("SLURM_NTASKS"))
            .or_else(|| get("SLURM_NPROCS"))
            .ok_or_else(|| anyhow!("SLURM_NTASKS is not set in this Slurm task (srun sets it)"))?;
        out.push(("WORLD_SIZE".into(), world));
        out.push((
            "LOCAL_RANK".into(),
            get("SLURM_LOCALID").unwrap_or_else(|| "0".into()),
        ));
        if get("MASTER_ADDR").is_none() {
            let list = get("SLURM_STEP_NODELIST")
                .or_else(|| get("SLURM_JOB_NODELIST"))
                .or_else(|| get("SLURM_NODELIST"))
                .ok_or_else(|| {
                    anyhow!("SLURM_JOB_NODELIST is not set: set MASTER_ADDR to rank 0's host")
                })?;
            let host = first_slurm_host(&list).ok_or_else(|| {
                anyhow!(
                    "SLURM_JOB_NODELIST=`{list}` names no host: set MASTER_ADDR to rank 0's host"
                )
            })?;
            out.push(("MASTER_ADDR".into(), host));
        }
        if get("MASTER_PORT").is_none() {
            let job: u64 = get("SLURM_JOB_ID")
                .and_then(|j| j.trim().parse().ok())
                .ok_or_else(|| anyhow!("MASTER_PORT is not set and SLURM_JOB_ID is not a job number: set MASTER_PORT"))?;
            out.push(("MASTER_PORT".into(), (20000 + job % 10000).to_string()));
        }
        return Ok((Some("slurm"), out));
    }
    if get("RANK").is_some() && get("LOCAL_RANK").is_none() {
        let rank: usize = get("RANK").and_then(|r| r.trim().parse().ok()).unwrap_or(0);
        let per_node = get("LOCAL_WORLD_SIZE")
            .or_else(|| get("PET_NPROC_PER_NODE"))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .filter(|&n| n > 0);
        let local = per_node.map_or(0, |n| rank % n);
        out.push(("LOCAL_RANK".into(), local.to_string()));
        return Ok((Some("without LOCAL_RANK (as a Kubeflow PyTorchJob)"), out));
    }
    Ok((None, out))
}

/// Reads the rank variables through `get` (the environment, or a test's map).
pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Rank> {
    let (_, implied) = launcher_vars(&get)?;
    let get = |name: &str| {
        get(name).or_else(|| {
            implied
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    };
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

/// The rank this process is, from its environment; says which launcher's variables were read
/// when they were not torchrun's.
pub fn from_env() -> Result<Rank> {
    let get = |name: &str| std::env::var(name).ok();
    let rank = from_vars(get)?;
    if let (Some(launcher), implied) = launcher_vars(&get)? {
        if rank.is_lead() {
            let vars: Vec<String> = implied.iter().map(|(k, v)| format!("{k}={v}")).collect();
            eprintln!("launcher: {launcher}: {}", vars.join(" "));
        }
    }
    Ok(rank)
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
    }

    #[test]
    fn a_missing_local_rank_is_derived_as_kubeflow_pods_need() {
        let r = read(&[("RANK", "0"), ("WORLD_SIZE", "1")]).expect("one pod");
        assert_eq!(r.local_rank, 0);
        let vars = [
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("MASTER_ADDR", "master-0"),
            ("MASTER_PORT", "23456"),
            ("PET_NPROC_PER_NODE", "2"),
        ];
        assert_eq!(read(&vars).expect("pod").local_rank, 1);
        assert_eq!(read(&vars[..4]).expect("pod").local_rank, 0);
    }

    #[test]
    fn the_first_host_of_a_slurm_node_list() {
        for (list, first) in [
            ("node[01-04,07],gpu5", "node01"),
            ("gpu5,node[01-04]", "gpu5"),
            ("n[3,5]-ib", "n3-ib"),
            ("localhost", "localhost"),
        ] {
            assert_eq!(first_slurm_host(list).as_deref(), Some(first), "{list}");
        }
        assert_eq!(first_slurm_host(""), None);
    }
}
