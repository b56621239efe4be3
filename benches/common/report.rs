//! How the benchmarks print what they measured: markdown tables, `raw:`
//! lines of the underlying numbers, nearest-rank percentiles, and the
//! small things every bench needs to pick and time (a seeded RNG, the
//! wall clock as a float).

use std::time::{SystemTime, UNIX_EPOCH};

pub type Rows = Vec<Vec<String>>;

pub fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// The columns a [`Percentiles`] row with its mean fills, after those
/// naming the row and before any the caller adds.
pub fn with_stats<'a>(naming: &[&'a str], after: &[&'a str]) -> Vec<&'a str> {
    let stats = ["n", "p50", "p90", "p99", "max", "mean"];
    naming.iter().chain(&stats).chain(after).copied().collect()
}

pub fn table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    println!("\n### {title}\n");
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
}

pub fn raw_lines(lines: &[String]) {
    println!();
    for l in lines {
        println!("raw: {l}");
    }
}

pub fn list(values: &[f64], decimals: usize) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
    items.join(" ")
}

pub fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The middle value (the mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; sorts `values`.
    pub fn of(values: &mut [f64]) -> Percentiles {
        values.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let rank = (p / 100.0 * values.len() as f64).ceil() as usize;
            values.get(rank.max(1) - 1).copied().unwrap_or(f64::NAN)
        };
        Percentiles {
            n: values.len(),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: values.last().copied().unwrap_or(f64::NAN),
            mean: values.iter().sum::<f64>() / values.len() as f64,
        }
    }

    /// `what`, n, p50, p90, p99, max.
    pub fn row(&self, what: &str) -> Vec<String> {
        let mut r = self.row_with_mean(what);
        r.pop();
        r
    }

    /// `what`, n, p50, p90, p99, max, mean; two decimals below 10, one above.
    pub fn row_with_mean(&self, what: &str) -> Vec<String> {
        let f = |v: f64| {
            if v.abs() < 10.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.1}")
            }
        };
        vec![
            what.into(),
            self.n.to_string(),
            f(self.p50),
            f(self.p90),
            f(self.p99),
            f(self.max),
            f(self.mean),
        ]
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// xorshift64*: enough to pick members, without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(nanos) | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}
