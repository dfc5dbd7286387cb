//! Always (on x86_64 targets): compiles the CPU engine's AVX2 and AVX-512 sgemm kernels
//! (`csrc/sgemm_avx2.c`, `csrc/sgemm_avx512.c`) with the system C compiler (through `cc`). With
//! the `cuda` feature also: compiles `csrc/*.cu` with nvcc (through `cc`), generates the FFI bindings from `csrc/alexnet_cuda.h` with bindgen,
//! and links cudart statically and cuBLAS dynamically (with an rpath to the toolkit's lib dir).
//! With `mpi`: compiles `csrc/mpi_consts.c` against the MPI headers. With `nccl`: binds `nccl.h`
//! and links libnccl.

fn main() {
    // First: the CUDA step below sets NVCC in this process's environment.
    sgemm_kernels();
    #[cfg(feature = "cuda")]
    cuda::build();
    #[cfg(feature = "mpi")]
    mpi_consts();
    #[cfg(feature = "nccl")]
    cuda::nccl();
}

/// `csrc/mpi_consts.c` into `alexnet_mpi_consts`: MPI_IN_PLACE and MPI_MAX_ERROR_STRING, which
/// rsmpi's bindings lack. The include paths come from the same probe (`mpicc -show`, pkg-config)
/// the `mpi` crate uses, so both see one MPI.
#[cfg(feature = "mpi")]
fn mpi_consts() {
    println!("cargo:rerun-if-changed=csrc/mpi_consts.c");
    let lib = build_probe_mpi::probe().unwrap_or_else(|errs| {
        let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        panic!(
            "feature `mpi`: no MPI found ({}); install one with `mpicc` (apt-get install \
             libopenmpi-dev openmpi-bin)",
            errs.join("; ")
        )
    });
    cc::Build::new()
        .file("csrc/mpi_consts.c")
        .includes(&lib.include_paths)
        .warnings(true)
        .compile("alexnet_mpi_consts");
}

/// The CPU engine's sgemm kernels, `csrc/sgemm_avx2.c` and `csrc/sgemm_avx512.c` (both around
/// `csrc/sgemm_blis.inc`), each into its own static library with its own instruction-set flags,
/// for x86_64 targets only (the build script's own `cfg` is the host's, so read the target's from
/// cargo). `src/engine/cpu/gemm.rs` calls each only on CPUs that have its instructions.
fn sgemm_kernels() {
    for f in [
        "sgemm.h",
        "sgemm_blis.inc",
        "sgemm_avx2.c",
        "sgemm_avx512.c",
        "winograd.h",
        "winograd_avx2.c",
    ] {
        println!("cargo:rerun-if-changed=csrc/{f}");
    }
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64") {
        return;
    }
    // (instruction set, its files, MSVC flag, GCC/Clang flags)
    let kernels = [
        (
            "avx2",
            &["sgemm_avx2.c", "winograd_avx2.c"][..],
            "/arch:AVX2",
            &["-mavx2", "-mfma"][..],
        ),
        (
            "avx512",
            &["sgemm_avx512.c"][..],
            "/arch:AVX512",
            &["-mavx512f", "-mfma"][..],
        ),
    ];
    for (isa, files, msvc_flag, gnu_flags) in kernels {
        let mut build = cc::Build::new();
        build
            .files(files.iter().map(|f| format!("csrc/{f}")))
            .include("csrc")
            // Whatever the cargo profile: the kernel is the point of this library.
            .opt_level(3)
            .warnings(true);
        if build.get_compiler().is_like_msvc() {
            build.flag(msvc_flag);
        } else {
            build.flag("-std=c11");
            for f in gnu_flags {
                build.flag(f);
            }
        }
        build.compile(&format!("alexnet_cpu_{isa}"));
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::env;
    use std::path::{Path, PathBuf};

    /// The toolkit root: CUDA_PATH, CUDA_HOME, the parent of `nvcc` on PATH, /usr/local/cuda.
    fn toolkit_root() -> PathBuf {
        for var in ["CUDA_PATH", "CUDA_HOME"] {
            if let Some(dir) = env::var_os(var).filter(|v| !v.is_empty()) {
                return PathBuf::from(dir);
            }
        }
        if let Some(paths) = env::var_os("PATH") {
            for dir in env::split_paths(&paths) {
                if dir.join("nvcc").is_file() {
                    if let Some(root) = dir.parent() {
                        return root.to_path_buf();
                    }
                }
            }
        }
        PathBuf::from("/usr/local/cuda")
    }

    /// lib64/ on a system install, lib/ in the PyPI wheels.
    fn lib_dir(root: &Path) -> PathBuf {
        for sub in ["lib64", "lib", "targets/x86_64-linux/lib"] {
            let dir = root.join(sub);
            if dir.join("libcudart_static.a").is_file() {
                return dir;
            }
        }
        panic!(
            "feature `cuda`: no libcudart_static.a under {} (lib64/, lib/); set CUDA_PATH to a \
             CUDA 13 toolkit (scripts/install-cuda-toolkit.sh installs one)",
            root.display()
        );
    }

    pub fn build() {
        for var in ["CUDA_PATH", "CUDA_HOME", "PATH", "NVCC_ARCHS"] {
            println!("cargo:rerun-if-env-changed={var}");
        }
        println!("cargo:rerun-if-changed=csrc");

        let root = toolkit_root();
        let nvcc = root.join("bin").join("nvcc");
        if !nvcc.is_file() {
            panic!(
                "feature `cuda`: nvcc not found at {}; set CUDA_PATH (or CUDA_HOME) to a CUDA 13 \
                 toolkit, or run scripts/install-cuda-toolkit.sh DIR and export CUDA_PATH",
                nvcc.display()
            );
        }
        let include = root.join("include");
        let lib = lib_dir(&root);

        let mut sources: Vec<PathBuf> = std::fs::read_dir("csrc")
            .expect("csrc/ exists")
            .map(|e| e.expect("readable csrc entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        sources.sort();

        // `cc` runs the nvcc named by NVCC (else the one on PATH); point it at the toolkit's.
        env::set_var("NVCC", &nvcc);
        let mut build = cc::Build::new();
        build
            .cuda(true)
            // Linked below, after this library, together with the rest.
            .cudart("none")
            // `cc` would pass -G (device debug: slow kernels) in debug builds.
            .debug(false)
            .include(&include)
            .include("csrc")
            .flag("-std=c++17")
            .flag("-Xcompiler")
            .flag("-Wall");
        // sm_90 (H100/H200) machine code plus compute_90 PTX for newer cards; NVCC_ARCHS adds
        // more, e.g. NVCC_ARCHS="80 86" to keep older cards.
        let mut archs = vec!["90".to_string()];
        if let Ok(extra) = env::var("NVCC_ARCHS") {
            archs.extend(extra.split_whitespace().map(str::to_string));
        }
        for arch in &archs {
            build.flag("-gencode").flag(format!(
                "arch=compute_{arch},code=[sm_{arch},compute_{arch}]"
            ));
        }
        build.files(&sources).compile("alexnet_cuda");

        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-lib=static=cudart_static");
        println!("cargo:rustc-link-lib=dylib=cublas");
        for sys in ["dl", "rt", "pthread"] {
            println!("cargo:rustc-link-lib=dylib={sys}");
        }
        // Binaries find libcublas.so.13 in the toolkit they were built against; elsewhere (the
        // GPU host) LD_LIBRARY_PATH points at its copy.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());

        let bindings = bindgen::Builder::default()
            .header("csrc/alexnet_cuda.h")
            .allowlist_function("anc_.*")
            .allowlist_type("anc_.*")
            .allowlist_var("ANC_.*")
            .prepend_enum_name(false)
            .derive_default(true)
            .layout_tests(false)
            .generate()
            .expect(
                "bindgen on csrc/alexnet_cuda.h (needs libclang: apt-get install libclang1-14)",
            );
        let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
        bindings
            .write_to_file(out.join("alexnet_cuda.rs"))
            .expect("write bindings");
    }

    /// NCCL: nccl.h and libnccl from NCCL_HOME, else from the toolkit (the installer links the
    /// wheel's files into it). Binds the calls `dist::nccl` makes, plus cudaSetDevice (cudart is
    /// already linked) so a communicator is created on its rank's device.
    #[cfg(feature = "nccl")]
    pub fn nccl() {
        println!("cargo:rerun-if-env-changed=NCCL_HOME");
        let cuda = toolkit_root();
        let home = env::var_os("NCCL_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| cuda.clone());
        let header = home.join("include").join("nccl.h");
        let lib = ["lib64", "lib"]
            .iter()
            .map(|sub| home.join(sub))
            .find(|dir| dir.join("libnccl.so").exists() || dir.join("libnccl.so.2").exists())
            .unwrap_or_else(|| {
                panic!(
                    "feature `nccl`: no libnccl.so under {} (lib64/, lib/); set NCCL_HOME, or \
                     rerun scripts/install-cuda-toolkit.sh, which installs NCCL into the toolkit",
                    home.display()
                )
            });
        assert!(
            header.is_file(),
            "feature `nccl`: {} missing; set NCCL_HOME to an NCCL install",
            header.display()
        );
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-lib=dylib=nccl");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());

        let bindings = bindgen::Builder::default()
            .header(header.to_string_lossy())
            .clang_arg(format!("-I{}", cuda.join("include").display()))
            .allowlist_function(
                "nccl(GetUniqueId|CommInitRank|AllReduce|CommDestroy|CommAbort|GetErrorString|GroupStart|GroupEnd)",
            )
            .allowlist_function("cudaSetDevice")
            .allowlist_type("ncclUniqueId")
            .allowlist_var("NCCL_UNIQUE_ID_BYTES")
            .prepend_enum_name(false)
            .layout_tests(false)
            .generate()
            .expect("bindgen on nccl.h (needs libclang: apt-get install libclang1-14)");
        let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
        bindings
            .write_to_file(out.join("nccl.rs"))
            .expect("write NCCL bindings");
    }
}
