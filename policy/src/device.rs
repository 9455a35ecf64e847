//! Which device the model runs on, picked at run time (`--device`), and how
//! a command is run generically on it.
use crate::model::Dev;
use anyhow::Result;
use clap::ValueEnum;

/// Where the model runs.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum DeviceKind {
    /// CPU (threads: RAYON_NUM_THREADS, default all cores).
    #[default]
    Cpu,
    /// The first NVIDIA GPU (needs a build with `--features cuda`).
    Cuda,
}

/// A command that runs on whichever device the user picked.
pub trait OnDevice {
    /// Runs the command with its model on `dev`.
    fn run_on<D: Dev>(self, dev: &D) -> Result<()>;
}

impl DeviceKind {
    /// Opens the device and runs `job` on it.
    pub fn dispatch(self, job: impl OnDevice) -> Result<()> {
        match self {
            DeviceKind::Cpu => job.run_on(&dfdx::tensor::Cpu::default()),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => {
                let dev = dfdx::tensor::Cuda::try_build(0, 0).map_err(|e| anyhow::anyhow!("cannot open CUDA device 0: {e:?}"))?;
                job.run_on(&dev)
            }
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda => anyhow::bail!("this build has no GPU support; rebuild with `cargo build --release --features cuda`"),
        }
    }
}
