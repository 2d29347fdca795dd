//! Device time per op from CUDA events, for `temper bench --profile`: every op of the
//! backend's trait opens a span; the outermost span of a nest records an event before and
//! after its work, labelled "stage/op" (the stage and detail come from the model). Off
//! unless switched on: then each op costs two event records.

use std::collections::BTreeMap;
use std::sync::Mutex;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;

use super::{dev_err, CudaBackend};
use crate::Result;

#[derive(Default)]
pub(super) struct Profiler {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    on: bool,
    stage: &'static str,
    detail: Option<&'static str>,
    /// Spans open now (only the outermost records).
    depth: usize,
    done: Vec<(String, CudaEvent, CudaEvent)>,
}

/// An open span; records its end on drop.
pub(super) struct Span<'a> {
    be: &'a CudaBackend,
    start: Option<(String, CudaEvent)>,
    counted: bool,
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let Ok(mut st) = self.be.profiler.state.lock() else {
            return;
        };
        st.depth = st.depth.saturating_sub(1);
        if let Some((label, start)) = self.start.take() {
            if let Ok(end) = self
                .be
                .stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            {
                st.done.push((label, start, end));
            }
        }
    }
}

impl CudaBackend {
    /// Opens a span for an op of kind `op`.
    pub(super) fn span(&self, op: &'static str) -> Span<'_> {
        let Ok(mut st) = self.profiler.state.lock() else {
            return Span {
                be: self,
                start: None,
                counted: false,
            };
        };
        if !st.on {
            return Span {
                be: self,
                start: None,
                counted: false,
            };
        }
        st.depth += 1;
        let start = if st.depth == 1 {
            let label = match st.detail {
                Some(d) => format!("{}/{op} ({d})", st.stage),
                None => format!("{}/{op}", st.stage),
            };
            self.stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .ok()
                .map(|e| (label, e))
        } else {
            None
        };
        Span {
            be: self,
            start,
            counted: true,
        }
    }
}

pub(super) fn enable(be: &CudaBackend, on: bool) {
    if let Ok(mut st) = be.profiler.state.lock() {
        st.on = on;
        st.done.clear();
        st.depth = 0;
    }
}

pub(super) fn stage(be: &CudaBackend, stage: &'static str) {
    if let Ok(mut st) = be.profiler.state.lock() {
        st.stage = stage;
    }
}

pub(super) fn detail(be: &CudaBackend, detail: Option<&'static str>) {
    if let Ok(mut st) = be.profiler.state.lock() {
        st.detail = detail;
    }
}

pub(super) fn take(be: &CudaBackend) -> Result<Vec<(String, f64)>> {
    let done = match be.profiler.state.lock() {
        Ok(mut st) => std::mem::take(&mut st.done),
        Err(_) => return Ok(vec![]),
    };
    be.synchronize()?;
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut prev_end: Option<&CudaEvent> = None;
    for (label, start, end) in &done {
        let ms = start.elapsed_ms(end).map_err(dev_err("profile event"))? as f64;
        *sums.entry(label.clone()).or_default() += ms;
        if let Some(p) = prev_end {
            let gap = p.elapsed_ms(start).map_err(dev_err("profile event"))? as f64;
            if gap > 0.0 {
                *sums.entry("idle".into()).or_default() += gap;
            }
        }
        prev_end = Some(end);
    }
    let mut out: Vec<(String, f64)> = sums.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(out)
}
