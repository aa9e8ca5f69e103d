//! A bench session: set the cluster and topic up, run `--runs` measurements, report.
//!
//! One measurement: read the partitions' positions, start consumers and group members,
//! start the clock and the producers; when the window ends the producers stop, the
//! consumers read up to the high watermarks (at most `--drain-timeout`) so that records
//! sent late in the window still get their end-to-end latency, and every task hands its
//! task-local statistics back to be merged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::client_producer;
use super::consumer::{self, ConsumerPlan, ConsumerStop};
use super::dev_cluster::DevCluster;
use super::fetch::ConsumeStats;
use super::group::{self, GroupPlan};
use super::hardware;
use super::phase::{now_us, Pacer, RunClock};
use super::producer::{self, ProduceStats, ProducerPlan};
use super::report::{self, ConsumeResult, PublishResult, Report, Row, RunResult, TopicSummary};
use super::sampler::{self, LiveCounters, RssSource};
use super::target::Target;
use super::{Acks, BenchArgs, BodyFormat, StartFrom};

/// Run field of prefilled records; runs never use it, so consumers never time them.
const PREFILL_RUN: u8 = 0xFF;

/// Prefill load: producers × in flight, records per request (half the API's limit keeps
/// requests well under the 10 MiB cap for values up to 16 KiB).
const PREFILL_PRODUCERS: u32 = 4;
const PREFILL_IN_FLIGHT: u32 = 4;
const PREFILL_RECORDS_PER_REQUEST: u32 = 500;

/// The longest a prefill may take before the bench gives up.
const PREFILL_TIMEOUT: Duration = Duration::from_secs(3600);

/// Everything a measurement needs that does not change between runs.
struct Session<'a> {
    args: &'a BenchArgs,
    target: Target,
    topic: TopicSummary,
    rss: Option<RssSource>,
    /// Base of the runs' value `run` field, different per bench invocation.
    run_base: u8,
    /// Group name prefix when `--group` is not given.
    group_prefix: String,
}

/// The cluster under test: a `--dev` cluster started here (stopped when dropped) or the
/// `--url` nodes, ready, with the token requests carry.
pub(crate) async fn open_cluster(args: &BenchArgs) -> anyhow::Result<(Option<DevCluster>, Target)> {
    let mut dev = match args.dev {
        true => {
            let d = DevCluster::start(
                args.dev_nodes,
                args.dev_base_port,
                args.dev_data_dir.as_deref(),
                args.keep_data,
                args.psubd.as_deref(),
                args.dev_auth,
            )?;
            eprintln!(
                "psubd-bench: started a {}-node dev cluster (data in {})",
                args.dev_nodes,
                d.data_dir().display()
            );
            Some(d)
        }
        false => None,
    };
    let urls = match &dev {
        Some(d) => d.urls().to_vec(),
        None => args.urls.clone(),
    };
    let target = Target::new(&urls)?;
    wait_ready(&target, dev.as_mut(), args.ready_timeout).await?;
    let token = match (&dev, &args.token) {
        (Some(d), _) if args.dev_auth => Some(d.admin_key()?),
        (_, token) => token.clone(),
    };
    let target = match token {
        Some(token) => target.with_token(&token)?,
        None => target,
    };

    Ok((dev, target))
}

/// Runs the whole bench (see [`super::run`]).
pub async fn run_all(args: &BenchArgs) -> anyhow::Result<()> {
    let started_at_unix_ms = now_us() / 1000;
    let build = hardware::build();
    let (mut dev, target) = open_cluster(args).await?;
    let data_dir = match &dev {
        Some(d) => Some(d.data_dir().to_path_buf()),
        None => args.data_dir.clone(),
    };
    let hardware = tokio::task::spawn_blocking(move || hardware::probe(data_dir.as_deref()))
        .await
        .context("the hardware probe failed")?;

    let (topic, _) = target
        .ensure_topic(
            &args.topic,
            args.partitions,
            args.replication_factor,
            args.ready_timeout,
        )
        .await?;
    if topic.partitions != args.partitions || topic.replication_factor != args.replication_factor {
        eprintln!(
            "psubd-bench: topic '{}' exists with {} partitions, rf {}: measuring those",
            args.topic, topic.partitions, topic.replication_factor
        );
    }
    let topic = TopicSummary {
        name: args.topic.clone(),
        partitions: topic.partitions,
        replication_factor: topic.replication_factor,
    };
    let cluster = target.cluster().await;
    let local = match &dev {
        Some(d) => d.node_pids(),
        None => sampler::local_node_pids(target.urls()),
    };
    let rss = if local.is_empty() {
        Some(RssSource::Metrics(target.urls().to_vec()))
    } else {
        Some(RssSource::Pids(local))
    };
    let session = Session {
        args,
        target,
        topic,
        rss,
        run_base: (now_us() / 1_000_000 % 255) as u8,
        group_prefix: format!("psubd-bench-{}-{}", args.topic, started_at_unix_ms / 1000),
    };

    report::print_preamble(
        args,
        &session.topic,
        session.target.urls(),
        &hardware,
        &build,
    );
    if args.prefill > 0 {
        session.prefill().await?;
    }
    if args.group_consumers > 0 {
        group::check_supported(&session.target, &session.group_plan(1)).await?;
    }

    report::print_table_header();
    let mut runs = Vec::with_capacity(args.runs as usize);
    for run in 1..=args.runs {
        if let Some(d) = dev.as_mut() {
            d.check_running()?;
        }
        let result = session.measure(run).await?;
        report::print_rows(&run.to_string(), &Row::of_run(&result));
        runs.push(result);
    }
    if runs.len() > 1 {
        report::print_rows("med", &Row::medians(&runs));
    }
    report::print_details(&runs);

    if let Some(path) = &args.json {
        let report = Report {
            tool: "psubd-bench",
            started_at_unix_ms,
            build: &build,
            hardware: &hardware,
            parameters: args,
            nodes: session.target.urls(),
            cluster,
            topic: session.topic.clone(),
            runs: &runs,
            median: Row::medians(&runs),
        };
        report::write_json(path, &report)?;
        println!("report: {}", path.display());
    }
    // Stops a --dev cluster (also on every early return above, by drop).
    drop(dev);
    Ok(())
}

/// Waits for `/readyz` on every node, failing fast if a `--dev` launcher dies.
pub(crate) async fn wait_ready(
    target: &Target,
    dev: Option<&mut DevCluster>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let Some(dev) = dev else {
        return target.wait_ready(timeout).await;
    };
    let ready = target.wait_ready(timeout);
    tokio::pin!(ready);
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            r = &mut ready => {
                return r.map_err(|e| anyhow::anyhow!("{e:#}\n`psubd dev` output:\n{}", dev.log_tail()));
            }
            _ = check.tick() => dev.check_running()?,
        }
    }
}

impl Session<'_> {
    fn group_plan(&self, run: u32) -> GroupPlan {
        let a = self.args;
        GroupPlan {
            members: a.group_consumers,
            group: a
                .group
                .clone()
                .unwrap_or_else(|| format!("{}-{run}", self.group_prefix)),
            topic: a.topic.clone(),
            max_records: a.fetch_max_records,
            max_bytes: a.fetch_max_bytes,
            timeout_ms: a.fetch_timeout_ms,
            commit_interval: a.commit_interval,
            request_timeout: a.request_timeout,
        }
    }

    /// Writes `--prefill` records before the runs.
    async fn prefill(&self) -> anyhow::Result<()> {
        let a = self.args;
        let plan = Arc::new(ProducerPlan::new(
            &self.target,
            &a.topic,
            self.topic.partitions,
            PREFILL_PRODUCERS,
            PREFILL_IN_FLIGHT,
            PREFILL_RECORDS_PER_REQUEST,
            a.record_size,
            Acks::All,
            BodyFormat::Json,
            a.retries,
            a.request_timeout,
            false,
        )?);
        eprintln!("psubd-bench: prefilling {} records", a.prefill);
        let clock = Arc::new(RunClock::start(
            PREFILL_RUN,
            Duration::ZERO,
            PREFILL_TIMEOUT,
            Some(a.prefill),
        ));
        let live = Arc::new(LiveCounters::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let progress = tokio::spawn(sampler::sample(
            Arc::clone(&clock),
            Arc::clone(&live),
            None,
            self.target.control().clone(),
            a.progress_interval,
            stop_rx,
        ));
        let mut tasks = JoinSet::new();
        producer::spawn(&mut tasks, &plan, &clock, None, &live)?;
        let mut stats = ProduceStats::default();
        while let Some(r) = tasks.join_next().await {
            stats.merge(&r.context("a prefill task failed")?);
        }
        let _ = stop_tx.send(true);
        let _ = progress.await;
        let secs = clock.window().as_secs_f64().max(1e-9);
        if stats.records < a.prefill {
            bail!(
                "prefill stopped after {} of {} records ({} failed requests)",
                stats.records,
                a.prefill,
                stats.failed_requests
            );
        }
        eprintln!(
            "psubd-bench: prefilled {} records in {:.1} s ({:.0} records/s)",
            stats.records,
            secs,
            stats.records as f64 / secs
        );
        Ok(())
    }

    /// One measurement.
    async fn measure(&self, run: u32) -> anyhow::Result<RunResult> {
        let a = self.args;
        let nonce = ((u32::from(self.run_base) + run) % u32::from(PREFILL_RUN)) as u8;
        let start = if a.consumers > 0 {
            self.target.partitions(&a.topic).await?
        } else {
            Vec::new()
        };
        let clock = Arc::new(RunClock::start(nonce, a.warmup, a.duration, a.max_records));
        let live = Arc::new(LiveCounters::default());
        let (stop_tx, stop_rx) = watch::channel(ConsumerStop::Running);
        let (sampler_tx, sampler_rx) = watch::channel(false);
        let sampler = tokio::spawn(sampler::sample(
            Arc::clone(&clock),
            Arc::clone(&live),
            self.rss.clone(),
            self.target.control().clone(),
            a.progress_interval,
            sampler_rx,
        ));

        let mut fetchers: JoinSet<ConsumeStats> = JoinSet::new();
        if a.consumers > 0 {
            let plan = ConsumerPlan {
                consumers: a.consumers,
                max_records: a.fetch_max_records,
                max_bytes: a.fetch_max_bytes,
                timeout_ms: a.fetch_timeout_ms,
                from_earliest: a.from == StartFrom::Earliest,
                wrap: a.producers == 0,
                request_timeout: a.request_timeout,
            };
            consumer::spawn(
                &mut fetchers,
                &plan,
                &self.target,
                &a.topic,
                &start,
                &clock,
                &stop_rx,
                &live,
            )?;
        }
        let mut members: JoinSet<ConsumeStats> = JoinSet::new();
        if a.group_consumers > 0 {
            group::spawn(
                &mut members,
                &self.group_plan(run),
                &self.target,
                &clock,
                &stop_rx,
                &live,
            )?;
        }

        let mut produced = ProduceStats::default();
        if a.producers > 0 {
            let plan = Arc::new(ProducerPlan::new(
                &self.target,
                &a.topic,
                self.topic.partitions,
                a.producers,
                a.in_flight,
                a.records_per_request,
                a.record_size,
                a.acks,
                a.format,
                a.retries,
                a.request_timeout,
                a.ids,
            )?);
            let pacer = a.rate.map(|r| Arc::new(Pacer::new(r)));
            let mut tasks = JoinSet::new();
            if a.client_producer {
                client_producer::spawn(&mut tasks, &plan, &clock, pacer, &live)?;
            } else {
                producer::spawn(&mut tasks, &plan, &clock, pacer, &live)?;
            }
            while let Some(r) = tasks.join_next().await {
                produced.merge(&r.context("a producer task failed")?);
            }
        } else {
            tokio::time::sleep_until(clock.window_end().into()).await;
        }

        // Drain: consumers read what the window published, then stop.
        if !fetchers.is_empty() || !members.is_empty() {
            if a.producers > 0 {
                let targets = match self.target.partitions(&a.topic).await {
                    Ok(parts) => parts.iter().map(|p| p.high_watermark).collect(),
                    Err(_) => Vec::new(), // unknown: stop at once
                };
                let _ = stop_tx.send(ConsumerStop::Drain(Arc::new(targets)));
            } else {
                let _ = stop_tx.send(ConsumerStop::Now);
            }
        }
        let deadline = Instant::now() + a.drain_timeout;
        let collect = async {
            let f = collect(&mut fetchers).await;
            let m = collect(&mut members).await;
            (f, m)
        };
        tokio::pin!(collect);
        let (fetched, grouped) = tokio::select! {
            r = &mut collect => r,
            _ = tokio::time::sleep_until(deadline.into()) => {
                let _ = stop_tx.send(ConsumerStop::Now);
                collect.await
            }
        };
        let (fetched, grouped) = (fetched?, grouped?);
        let _ = sampler_tx.send(true);
        let samples = sampler.await.context("the sampler failed")?;

        let window = clock.window();
        Ok(RunResult {
            run,
            window_s: window.as_secs_f64(),
            publish: (a.producers > 0).then(|| PublishResult::new(&produced, window)),
            fetch: (a.consumers > 0).then(|| ConsumeResult::new(&fetched, window)),
            group: (a.group_consumers > 0).then(|| ConsumeResult::new(&grouped, window)),
            rate_drift: (a.producers > 0)
                .then(|| RunResult::drift(&samples.series, window))
                .flatten(),
            cpu: (a.producers > 0)
                .then(|| RunResult::cpu_cost(&samples.series, window))
                .flatten(),
            series: samples.series,
            node_rss_max_bytes: samples.rss_max,
        })
    }
}

/// Merges the statistics of every task in `set`.
async fn collect(set: &mut JoinSet<ConsumeStats>) -> anyhow::Result<ConsumeStats> {
    let mut total = ConsumeStats::default();
    while let Some(r) = set.join_next().await {
        total.merge(&r.context("a consumer task failed")?);
    }
    Ok(total)
}
