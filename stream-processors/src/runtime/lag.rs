//! Lag and backfill progress, measured on a thread of its own (watermark queries can take
//! seconds on tansu and must not stall the processing loop): for every input partition
//! this instance owns, the end of the partition minus the group's committed offset.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::Status;
use super::config::RuntimeConfig;
use super::kafka::{ReaderContext, reader_config};
use super::metrics::{Progress, RuntimeMetrics};

pub(crate) fn spawn(
    cfg: RuntimeConfig,
    metrics: RuntimeMetrics,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
) {
    let _ = std::thread::Builder::new()
        .name(format!("processor-{}-lag", cfg.instance_id))
        .spawn(move || {
            let mut reader_cfg = reader_config(&cfg);
            reader_cfg.set("group.id", cfg.group_id());
            let Ok(reader) =
                reader_cfg.create_with_context::<_, BaseConsumer<ReaderContext>>(ReaderContext)
            else {
                return;
            };
            let interval = Duration::from_millis(cfg.progress_interval_ms.max(100));
            let mut last = (Instant::now(), status.consumed_records());
            while !stop.load(Ordering::SeqCst) {
                let until = Instant::now() + interval;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let assigned = status.assigned();
                if assigned.is_empty() {
                    continue;
                }
                let mut tpl = TopicPartitionList::new();
                for (t, p) in &assigned {
                    tpl.add_partition(t, *p);
                }
                let Ok(committed) = reader.committed_offsets(tpl, Duration::from_secs(10)) else {
                    continue;
                };
                let mut lags = Vec::new();
                for (topic, partition) in &assigned {
                    let Ok((low, high)) =
                        reader.fetch_watermarks(topic, *partition, Duration::from_secs(10))
                    else {
                        continue;
                    };
                    let position = committed
                        .find_partition(topic, *partition)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        })
                        .unwrap_or(low);
                    lags.push((topic.clone(), *partition, (high - position).max(0)));
                }
                let consumed = status.consumed_records();
                let secs = last.0.elapsed().as_secs_f64().max(1e-3);
                Progress {
                    lags: &lags,
                    consumed,
                    rate_per_sec: consumed.saturating_sub(last.1) as f64 / secs,
                }
                .emit(&metrics);
                last = (Instant::now(), consumed);
            }
        });
}
