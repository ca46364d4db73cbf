//! What each kind of on-demand capture starts and writes: profiles as gzip
//! pprof plus an SVG flamegraph, tables as JSON.

use std::time::Duration;

use serde::Serialize;

use super::{
    Shared,
    captures::{CaptureRequest, record},
};
use crate::{
    aggregate::{
        memory::{INUSE_SPACE, SAMPLE_TYPES},
        stacks::StackCounts,
    },
    export::{profile, store::CaptureMeta},
    probes::{
        component::CaptureKind,
        cpu::{CpuConfig, CpuSampler},
        memory::{MemoryConfig, MemoryProfiler},
        offcpu::{OffcpuOptions, OffcpuProfiler},
        process_maps::ProcessMaps,
        queries::{QueryOptions, QueryTracer},
        syscalls::{SyscallConfig, SyscallMode, SyscallTracer},
        tcp::{TcpOptions, TcpTracer},
    },
    symbolize::{ProfileShape, Symbolizer},
};

/// Runs one capture of `kind` and writes its files, filling `meta`.
pub fn run(
    shared: &Shared,
    kind: CaptureKind,
    req: &CaptureRequest,
    duration: Duration,
    meta: &mut CaptureMeta,
) -> anyhow::Result<()> {
    match kind {
        CaptureKind::Cpu => {
            let hz = req.hz.unwrap_or(99);
            let config = CpuConfig {
                hz,
                pids: req.pids.clone(),
                by_query: false,
                include_idle: false,
            };
            let cap = record::<CpuSampler>(shared, &config, duration)?;
            meta.counts.push(("samples".into(), cap.total_samples));
            meta.drops = owned(&cap.drops);
            let period = 1_000_000_000 / hz as i64;
            let types = [("samples", "count"), ("cpu", "nanoseconds")];
            write_profile(
                shared,
                meta,
                "cpu",
                &cap.stacks,
                &cap.maps,
                &types,
                period,
                1,
            )
        }
        CaptureKind::Syscalls => {
            let config = SyscallConfig {
                pids: req.pids.clone(),
                mode: SyscallMode::Full,
                ..SyscallConfig::default()
            };
            let table = record::<SyscallTracer>(shared, &config, duration)?;
            meta.drops = owned(&table.drops);
            let rows = table.rows();
            meta.counts.push(("rows".into(), rows.len() as u64));
            write_json(shared, meta, "syscalls.json", &rows)
        }
        CaptureKind::Tcp => {
            let config = TcpOptions {
                pids: req.pids.clone(),
            };
            let table = record::<TcpTracer>(shared, &config, duration)?;
            let rows = table.rows();
            meta.counts.push(("peers".into(), rows.len() as u64));
            write_json(shared, meta, "tcp.json", &rows)
        }
        CaptureKind::Offcpu => {
            let options = OffcpuOptions {
                pids: req.pids.clone(),
                // As `record offcpu`'s default: shorter waits are mostly
                // scheduler noise.
                min_block_ns: 1_000_000,
                by_query: false,
            };
            let cap = record::<OffcpuProfiler>(shared, &options, duration)?;
            meta.drops = owned(&cap.drops);
            let types = [("samples", "count"), ("offcpu", "nanoseconds")];
            write_profile(shared, meta, "offcpu", &cap.stacks, &cap.maps, &types, 1, 1)
        }
        CaptureKind::Memory => {
            let config = MemoryConfig {
                pids: req.pids.clone(),
                // `record memory`'s default: one sample per 512 KiB.
                sample_bytes: 524_288,
            };
            let snap = record::<MemoryProfiler>(shared, &config, duration)?;
            meta.drops = owned(&snap.drops);
            meta.counts.push(("sampled".into(), snap.stats.sampled));
            write_profile(
                shared,
                meta,
                "memory",
                &snap.stacks,
                &snap.maps,
                &SAMPLE_TYPES,
                1,
                INUSE_SPACE,
            )
        }
        CaptureKind::Queries => {
            let options = QueryOptions {
                pids: req.pids.clone(),
                raw_queries: shared.config().raw_queries,
            };
            let window = record::<QueryTracer>(shared, &options, duration)?;
            let rows = window.table.rows();
            meta.counts.push(("statements".into(), rows.len() as u64));
            write_json(shared, meta, "queries.json", &rows)
        }
    }
}

fn owned(drops: &[(&'static str, u64)]) -> Vec<(String, u64)> {
    drops.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect()
}

fn write_json<T: Serialize>(
    shared: &Shared,
    meta: &mut CaptureMeta,
    name: &str,
    rows: &T,
) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(rows)?;
    shared.store.write_capture_file(&meta.id, name, &json)?;
    meta.files.push(name.to_owned());
    Ok(())
}

/// Symbolizes and writes `<what>.pb.gz` and `<what>.svg` (value `index`).
#[expect(
    clippy::too_many_arguments,
    reason = "one call site per profile kind; a struct would only rename them"
)]
fn write_profile(
    shared: &Shared,
    meta: &mut CaptureMeta,
    what: &str,
    stacks: &StackCounts,
    maps: &ProcessMaps,
    types: &[(&str, &str)],
    period: i64,
    index: usize,
) -> anyhow::Result<()> {
    let sample_types: Vec<profiles::ValueType> = types
        .iter()
        .map(|(t, u)| profiles::ValueType::new(*t, *u))
        .collect();
    let period_type = sample_types.get(index).cloned().unwrap_or_default();
    let shape = ProfileShape {
        sample_types,
        period_type,
        period,
        time_nanos: meta.started_unix_ms as i64 * 1_000_000,
        duration_nanos: (meta.duration_s * 1e9) as i64,
    };
    let profile = profile::build(&mut Symbolizer::new(), stacks, maps, &shape);
    let pprof = profile::pprof_gzip(&profile)?;
    let name = format!("{what}.pb.gz");
    shared.store.write_capture_file(&meta.id, &name, &pprof)?;
    meta.files.push(name);
    let mut svg = Vec::new();
    if profiles::flamegraph::render_svg(
        &profile,
        index,
        &format!("qprof: {what} capture {}", meta.id),
        &mut svg,
    )
    .is_ok()
    {
        let name = format!("{what}.svg");
        shared.store.write_capture_file(&meta.id, &name, &svg)?;
        meta.files.push(name);
    }
    Ok(())
}
