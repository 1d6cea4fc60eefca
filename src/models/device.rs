//! Which device trains: `cpu` (burn's flex backend), `cuda[:N]` (burn's CUDA backend, with
//! the `cuda` cargo feature) or `wgpu` (burn's WebGPU backend on Vulkan, with the `wgpu`
//! feature: any Vulkan device, Mesa's lavapipe on the CPU included), and in which precision.

use std::fmt;

/// A device named in a workflow (`device:`) or on the command line (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    /// The default Vulkan device (`wgpu`); f32 only.
    Wgpu,
}

/// Arithmetic precision of matrix products; weights, optimizer state and reductions stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Wgpu => write!(f, "wgpu"),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl Precision {
    pub fn parse(s: &str) -> Result<Precision, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            other => Err(format!("precision `{other}` is not one of f32, bf16, f16")),
        }
    }
}

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Whether this binary was built with the `wgpu` feature.
pub const WGPU_BUILT: bool = cfg!(feature = "wgpu");

/// The compute backends this binary was built with (`--features cuda`, `--features wgpu`), so
/// `dnaflow env` and run records can tell a CPU-only binary from one that can use a GPU.
pub fn compiled_backends() -> Vec<String> {
    let mut backends = vec!["cpu".to_string()];
    if CUDA_BUILT {
        backends.push("cuda".into());
    }
    if WGPU_BUILT {
        backends.push("wgpu (Vulkan)".into());
    }
    backends
}

/// NVIDIA GPUs the driver reports (Linux: /proc/driver/nvidia/gpus), honouring
/// CUDA_VISIBLE_DEVICES when set.
pub fn cuda_device_count() -> usize {
    let present = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .map(|d| d.count())
        .unwrap_or(0);
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) if v.trim().is_empty() => 0,
        Ok(v) => v
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .count()
            .min(present),
        Err(_) => present,
    }
}

impl DeviceSpec {
    /// Parse `cpu`, `cuda`, `cuda:N` or `auto` (the first GPU when there is one and this
    /// binary can use it, else the CPU).
    pub fn parse(s: &str) -> Result<DeviceSpec, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(if CUDA_BUILT && cuda_device_count() > 0 {
                DeviceSpec::Cuda(0)
            } else {
                DeviceSpec::Cpu
            }),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            "wgpu" | "vulkan" => Ok(DeviceSpec::Wgpu),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceSpec::Cuda(i)),
                _ => Err(format!(
                    "device `{s}` is not one of cpu, cuda, cuda:N, wgpu, auto"
                )),
            },
        }
    }

    /// Refuse a device this binary or machine does not have, saying what to do.
    pub fn check_available(self) -> Result<(), String> {
        match self {
            DeviceSpec::Cpu => Ok(()),
            DeviceSpec::Wgpu if !WGPU_BUILT => Err(format!(
                "device `{self}` needs a dnaflow built with the WebGPU backend: \
                 cargo build --features wgpu (or use device: cpu)"
            )),
            DeviceSpec::Wgpu => Ok(()),
            DeviceSpec::Cuda(_) if !CUDA_BUILT => Err(format!(
                "device `{self}` needs a dnaflow built with CUDA: \
                 cargo build --release --features cuda (or use device: cpu)"
            )),
            DeviceSpec::Cuda(i) => {
                let n = cuda_device_count();
                if i < n {
                    Ok(())
                } else if n == 0 {
                    Err(format!(
                        "device `{self}`: no NVIDIA GPU is visible here \
                         (no /proc/driver/nvidia/gpus, or CUDA_VISIBLE_DEVICES is empty); \
                         use device: cpu"
                    ))
                } else {
                    Err(format!(
                        "device `{self}`: only {n} GPU(s) are visible (cuda:0..cuda:{})",
                        n - 1
                    ))
                }
            }
        }
    }

    /// Refuse half precision where it is not offered.
    pub fn check_precision(self, precision: Precision) -> Result<(), String> {
        match self {
            DeviceSpec::Cuda(_) => {}
            DeviceSpec::Cpu if precision != Precision::F32 => {
                return Err(format!(
                    "precision `{precision}` is for CUDA; on the CPU use precision: f32"
                ));
            }
            DeviceSpec::Wgpu if precision != Precision::F32 => {
                return Err(format!(
                    "precision `{precision}` is for CUDA; on `wgpu` use precision: f32"
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Run `$body` on the device `$spec` names, with `$B` its backend type: flex on the CPU,
/// burn's CUDA or Vulkan backend where this binary has the feature (a spec it lacks was
/// refused by [`$crate::models::DeviceSpec::check_available`] before).
macro_rules! on_device {
    ($spec:expr, $precision:expr, |$dev:ident : $B:ident| $body:expr) => {{
        match $spec {
            $crate::models::DeviceSpec::Cpu => {
                type $B = burn::backend::Flex;
                let $dev = burn::backend::flex::FlexDevice;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::models::DeviceSpec::Cuda(i) => {
                type $B = burn::backend::Cuda;
                let $dev = burn::backend::cuda::CudaDevice::new(i);
                let _ = $precision;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::models::DeviceSpec::Cuda(_) => {
                let _ = $precision;
                unreachable!("checked by DeviceSpec::check_available")
            }
            #[cfg(feature = "wgpu")]
            $crate::models::DeviceSpec::Wgpu => {
                type $B = burn::backend::Vulkan;
                let $dev = burn::backend::wgpu::WgpuDevice::DefaultDevice;
                let _ = $precision;
                $body
            }
            #[cfg(not(feature = "wgpu"))]
            $crate::models::DeviceSpec::Wgpu => {
                let _ = $precision;
                unreachable!("checked by DeviceSpec::check_available")
            }
        }
    }};
}
pub(crate) use on_device;

/// The device the model tests run on: `DNAFLOW_TEST_DEVICE` (cpu, cuda, cuda:N, auto), the CPU
/// when it is unset or empty. So the same test binary, built with `--features cuda`, checks the
/// CUDA backend on a GPU machine (scripts/gpu-check.sh, docs/gpu.md). A device this binary or
/// machine cannot use panics with the reason: a GPU run never passes on the CPU by mistake.
#[cfg(test)]
pub(crate) fn test_device() -> DeviceSpec {
    let name = std::env::var("DNAFLOW_TEST_DEVICE").unwrap_or_default();
    if name.trim().is_empty() {
        return DeviceSpec::Cpu;
    }
    let spec = DeviceSpec::parse(&name).unwrap_or_else(|e| panic!("DNAFLOW_TEST_DEVICE: {e}"));
    if let Err(e) = spec.check_available() {
        panic!("DNAFLOW_TEST_DEVICE={name}: {e}");
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("CUDA:2").unwrap(), DeviceSpec::Cuda(2));
        assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert!(DeviceSpec::parse("tpu").unwrap_err().contains("cpu, cuda"));
        assert!(DeviceSpec::Cpu.check_precision(Precision::Bf16).is_err());
    }

    #[test]
    fn absent_gpu_is_a_clear_error() {
        if CUDA_BUILT && cuda_device_count() > 0 {
            return;
        }
        let err = DeviceSpec::Cuda(0).check_available().unwrap_err();
        assert!(err.contains("cuda:0"), "{err}");
    }
}
