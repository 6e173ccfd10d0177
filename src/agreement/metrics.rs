//! Agreement between a judge and gold values: numbers in, numbers out.
//! Every function here is pure and checked against scikit-learn / scipy on
//! committed fixtures (`tests/fixtures/gen/agreement_expected.py`).
//!
//! Undefined values (κ with one class only, precision of a class the judge
//! never answered) are `None`, never NaN: callers say why in words.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The seed of every bootstrap: runs of the same job give the same interval.
pub const BOOTSTRAP_SEED: u64 = 0x6261_7463_6867_7264; // "batchgrd"
/// Resamples of the bootstrap (fewer for very large sets: see `resamples_for`).
pub const BOOTSTRAP_RESAMPLES: u32 = 1000;

/// A 95% interval, serialized as `[lo, hi]`.
pub type Interval = [f64; 2];

/// One class of a categorical field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassStats {
    pub label: String,
    /// Gold rows of this class.
    pub support: u64,
    /// Of the rows the judge put in this class, the share that are; `None`
    /// when the judge never answered it.
    pub precision: Option<f64>,
    /// `None` when no gold row is of this class.
    pub recall: Option<f64>,
    /// `None` when precision or recall is undefined, or both are 0.
    pub f1: Option<f64>,
}

/// Rows gold, columns judge, in `labels` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<u64>>,
}

/// Two classes: how the judge does on each, and the judge's positive rate
/// over rows without gold corrected for its measured error rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binary {
    /// The class counted as positive.
    pub positive: String,
    /// Sensitivity: positives the judge called positive. `None` with no gold positive.
    pub tpr: Option<f64>,
    /// Wilson 95% interval of `tpr`.
    pub tpr_ci: Option<Interval>,
    /// Specificity: negatives the judge called negative. `None` with no gold negative.
    pub tnr: Option<f64>,
    pub tnr_ci: Option<Interval>,
    /// Rows without gold that the judge graded (both classes).
    pub unlabelled: u64,
    /// The judge's positive share over those rows; `None` when there are none.
    pub judge_positive_rate: Option<f64>,
    /// Rogan–Gladen: the positive share corrected for TPR and TNR, clipped
    /// to [0, 1]; `None` when there are no unlabelled rows or the judge is no
    /// better than chance (TPR + TNR <= 1).
    pub corrected_positive_rate: Option<f64>,
    /// Its 95% interval (delta method, clipped to [0, 1]).
    pub corrected_ci: Option<Interval>,
}

/// Agreement on a categorical field (labels, enums, booleans, regex
/// captures, text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Categorical {
    pub n: u64,
    pub accuracy: f64,
    /// Cohen's κ; `None` when undefined (gold and judge both use one and the
    /// same class only, so chance agreement is 1).
    pub kappa: Option<f64>,
    /// Percentile bootstrap 95% interval of κ (fixed seed).
    pub kappa_ci: Option<Interval>,
    /// Accuracy of always answering the commonest gold value.
    pub baseline: f64,
    /// That value.
    pub baseline_label: String,
    pub classes: Vec<ClassStats>,
    pub confusion: Confusion,
}

/// Agreement on a numeric field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ordinal {
    pub n: u64,
    /// Share with judge == gold.
    pub exact: f64,
    /// Share with |judge - gold| <= 1.
    pub within_1: f64,
    /// Mean absolute error.
    pub mae: f64,
    /// Mean signed difference, judge - gold.
    pub bias: f64,
    /// Quadratic-weighted κ over the integer scale min..=max of both sides;
    /// `None` when a value is not an integer, the scale is wider than
    /// `MAX_SCALE`, or κ is undefined (one value only).
    pub weighted_kappa: Option<f64>,
    /// Spearman's ρ (average ranks for ties); `None` when either side is constant.
    pub spearman: Option<f64>,
    /// Gold × judge counts over the distinct values (sorted numerically),
    /// when there are at most 25 of them: the report's heat table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Confusion>,
}

/// Widest integer scale weighted κ is computed on.
pub const MAX_SCALE: i64 = 1000;

/// Gold-judge pairs of a categorical field. `order`: the field's declared
/// classes (labels, enum values, `false`/`true`) listed first, in that
/// order; values seen that are not in it follow, sorted. Empty `pairs`
/// gives `n: 0` and zero rates.
pub fn categorical(pairs: &[(&str, &str)], order: &[String]) -> Categorical {
    if pairs.is_empty() {
        return Categorical {
            n: 0,
            accuracy: 0.0,
            kappa: None,
            kappa_ci: None,
            baseline: 0.0,
            baseline_label: String::new(),
            classes: Vec::new(),
            confusion: Confusion {
                labels: Vec::new(),
                matrix: Vec::new(),
            },
        };
    }
    let coded = Coded::new(pairs, order);
    let k = coded.labels.len();
    let matrix = coded.table();
    let counts = coded.counts();
    let n = counts.n;
    let classes = coded
        .labels
        .iter()
        .enumerate()
        .map(|(i, label)| class_stats(label, matrix[i][i], counts.gold[i], counts.judge[i]))
        .collect();
    let (baseline_index, baseline_rows) = commonest(&counts.gold);
    let kappa = counts.kappa();
    // Without κ there is one class only, and so in every resample too.
    let kappa_ci = kappa
        .and_then(|_| bootstrap_kappa(&coded.pairs, k, BOOTSTRAP_SEED, resamples_for(pairs.len())));
    Categorical {
        n,
        accuracy: counts.agree as f64 / n as f64,
        kappa,
        kappa_ci,
        baseline: baseline_rows as f64 / n as f64,
        baseline_label: coded.labels[baseline_index].clone(),
        classes,
        confusion: Confusion {
            labels: coded.labels,
            matrix,
        },
    }
}

/// Precision, recall and F1 of one class from its diagonal cell and its
/// gold (support) and judge totals.
fn class_stats(label: &str, hits: u64, support: u64, answered: u64) -> ClassStats {
    let precision = ratio(hits, answered);
    let recall = ratio(hits, support);
    ClassStats {
        label: label.to_string(),
        support,
        precision,
        recall,
        f1: f1(precision, recall),
    }
}

/// Harmonic mean of precision and recall. When both are 0 it is 0/0:
/// scikit-learn reports 0 there (its formula is 2tp / (2tp + fp + fn)), and
/// also when one of the two is undefined; we say undefined, so a class the
/// judge never answered is not shown as a measured F1 of 0.
fn f1(precision: Option<f64>, recall: Option<f64>) -> Option<f64> {
    let (p, r) = (precision?, recall?);
    (p + r > 0.0).then(|| 2.0 * p * r / (p + r))
}

/// The index and count of the largest count; on a tie the first, so the
/// baseline is the earliest class in the declared order.
fn commonest(counts: &[u64]) -> (usize, u64) {
    let mut best = (0, 0);
    for (i, &count) in counts.iter().enumerate() {
        if count > best.1 {
            best = (i, count);
        }
    }
    best
}

/// `part / whole`, `None` when `whole` is 0.
fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Cohen's κ of gold-judge pairs; `None` when undefined.
pub fn cohen_kappa(pairs: &[(&str, &str)]) -> Option<f64> {
    Coded::new(pairs, &[]).counts().kappa()
}

/// Percentile bootstrap 95% interval of κ with `seed`; resamples where κ is
/// undefined are left out; `None` when fewer than half remain or `pairs` is empty.
pub fn kappa_interval(pairs: &[(&str, &str)], seed: u64, resamples: u32) -> Option<Interval> {
    let coded = Coded::new(pairs, &[]);
    bootstrap_kappa(&coded.pairs, coded.labels.len(), seed, resamples)
}

/// How many resamples for `n` pairs: `BOOTSTRAP_RESAMPLES`, fewer when
/// `n * resamples` would pass 50 million (never under 200).
pub fn resamples_for(n: usize) -> u32 {
    let n = n as u64;
    if n.saturating_mul(u64::from(BOOTSTRAP_RESAMPLES)) <= MAX_DRAWS {
        return BOOTSTRAP_RESAMPLES;
    }
    // Here n > 50 000, so the quotient is below 1000 and fits a u32.
    let fitting = (MAX_DRAWS / n) as u32;
    fitting.max(MIN_RESAMPLES)
}

/// Draws (rows × resamples) above which the bootstrap takes fewer resamples,
/// so a large job's report stays quick (about a second).
const MAX_DRAWS: u64 = 50_000_000;
/// Fewer resamples than this make the 2.5% tail too coarse.
const MIN_RESAMPLES: u32 = 200;

/// The 0.975 quantile of the standard normal (two-sided 95%), as
/// `scipy.stats.norm.ppf(0.975)`.
const Z95: f64 = 1.959963984540054;

/// Pairs as small integer ids into `labels`, so counting compares
/// integers, not strings.
struct Coded {
    labels: Vec<String>,
    pairs: Vec<(usize, usize)>,
}

impl Coded {
    /// Ids in the order of `order` first, then every other value seen in
    /// `pairs`, sorted.
    fn new<'a>(pairs: &[(&'a str, &'a str)], order: &'a [String]) -> Coded {
        let mut others: Vec<&'a str> = pairs.iter().flat_map(|&(g, j)| [g, j]).collect();
        others.sort_unstable();
        others.dedup();
        let mut ids: HashMap<&'a str, usize> = HashMap::new();
        let mut labels = Vec::new();
        for label in order.iter().map(String::as_str).chain(others) {
            if !ids.contains_key(label) {
                ids.insert(label, labels.len());
                labels.push(label.to_string());
            }
        }
        let pairs = pairs.iter().map(|&(g, j)| (ids[g], ids[j])).collect();
        Coded { labels, pairs }
    }

    /// The confusion matrix: rows gold, columns judge.
    fn table(&self) -> Vec<Vec<u64>> {
        let k = self.labels.len();
        let mut matrix = vec![vec![0; k]; k];
        for &(g, j) in &self.pairs {
            matrix[g][j] += 1;
        }
        matrix
    }

    fn counts(&self) -> Counts {
        let mut counts = Counts::new(self.labels.len());
        for &(g, j) in &self.pairs {
            counts.add(g, j);
        }
        counts
    }
}

/// What κ needs of a k×k confusion table: its total, its diagonal sum and
/// its row (gold) and column (judge) totals. Keeping only these makes a
/// bootstrap resample O(n + k) rather than O(n + k²) when there are many
/// distinct values (free text).
struct Counts {
    n: u64,
    agree: u64,
    gold: Vec<u64>,
    judge: Vec<u64>,
}

impl Counts {
    fn new(k: usize) -> Counts {
        Counts {
            n: 0,
            agree: 0,
            gold: vec![0; k],
            judge: vec![0; k],
        }
    }

    fn add(&mut self, gold: usize, judge: usize) {
        self.n += 1;
        self.agree += u64::from(gold == judge);
        self.gold[gold] += 1;
        self.judge[judge] += 1;
    }

    fn clear(&mut self) {
        self.n = 0;
        self.agree = 0;
        self.gold.fill(0);
        self.judge.fill(0);
    }

    /// Cohen (1960), "A coefficient of agreement for nominal scales",
    /// Educational and Psychological Measurement 20:37–46:
    /// κ = (po − pe) / (1 − pe), po = agree / n, pe = Σ gold_i·judge_i / n².
    /// Multiplied through by n² everything but the last division is exact
    /// integer arithmetic. Undefined when pe = 1: both sides use one and the
    /// same class only.
    fn kappa(&self) -> Option<f64> {
        let n = u128::from(self.n);
        let chance: u128 = self
            .gold
            .iter()
            .zip(&self.judge)
            .map(|(&g, &j)| u128::from(g) * u128::from(j))
            .sum();
        if n == 0 || chance == n * n {
            return None;
        }
        let observed = n * u128::from(self.agree);
        Some((observed as f64 - chance as f64) / (n * n - chance) as f64)
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014, "Fast splittable pseudorandom
/// number generators", OOPSLA; constants of Vigna's reference C code): small,
/// fast, well mixed, and easy to reproduce in the Python fixture generator.
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Percentile bootstrap (Efron & Tibshirani 1993, ch. 13) of κ over coded
/// pairs with `k` classes: `resamples` times draw n rows with replacement,
/// compute κ, and take the 2.5th and 97.5th percentiles of the defined ones.
fn bootstrap_kappa(
    pairs: &[(usize, usize)],
    k: usize,
    seed: u64,
    resamples: u32,
) -> Option<Interval> {
    let n = pairs.len() as u64;
    if n == 0 {
        return None;
    }
    let mut rng = SplitMix64::new(seed);
    let mut counts = Counts::new(k);
    let mut kept = Vec::with_capacity(resamples as usize);
    for _ in 0..resamples {
        counts.clear();
        for _ in 0..n {
            // `% n` favours the lowest indices by at most n / 2^64 in
            // probability (under 3e-15 for 50 000 rows): negligible next to
            // the bootstrap's own noise, and simple to reproduce.
            let (g, j) = pairs[(rng.next_u64() % n) as usize];
            counts.add(g, j);
        }
        kept.extend(counts.kappa());
    }
    if kept.is_empty() || kept.len() * 2 < resamples as usize {
        return None;
    }
    kept.sort_by(f64::total_cmp);
    Some([percentile(&kept, 2.5), percentile(&kept, 97.5)])
}

/// The `q`th percentile of sorted, non-empty values by linear interpolation
/// between the closest ranks: numpy's default "linear" method (Hyndman &
/// Fan 1996, definition 7), including its way of interpolating from the
/// nearer end.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let last = sorted.len() - 1;
    let position = last as f64 * (q / 100.0);
    let below = position.floor();
    let t = position - below;
    let lo = sorted[below as usize];
    let hi = sorted[(below as usize + 1).min(last)];
    if t >= 0.5 {
        hi - (hi - lo) * (1.0 - t)
    } else {
        lo + (hi - lo) * t
    }
}

/// TPR, TNR and the corrected positive rate. `pairs`: gold-judge pairs of a
/// two-class field; `unlabelled`: (judge positives, judge answers) over rows
/// without gold.
pub fn binary(pairs: &[(&str, &str)], positive: &str, unlabelled: (u64, u64)) -> Binary {
    let mut rates = Rates::default();
    for &(gold, judge) in pairs {
        if gold == positive {
            rates.positives += 1;
            rates.true_positives += u64::from(judge == positive);
        } else {
            rates.negatives += 1;
            rates.true_negatives += u64::from(judge != positive);
        }
    }
    // More positives than answers would be a caller's slip; saturating
    // keeps the rate a share.
    rates.judged = unlabelled.1;
    rates.judged_positive = unlabelled.0.min(unlabelled.1);
    let corrected = rates.rogan_gladen();
    Binary {
        positive: positive.to_string(),
        tpr: ratio(rates.true_positives, rates.positives),
        tpr_ci: wilson(rates.true_positives, rates.positives),
        tnr: ratio(rates.true_negatives, rates.negatives),
        tnr_ci: wilson(rates.true_negatives, rates.negatives),
        unlabelled: rates.judged,
        judge_positive_rate: ratio(rates.judged_positive, rates.judged),
        corrected_positive_rate: corrected.map(|(rate, _)| rate),
        corrected_ci: corrected.map(|(_, ci)| ci),
    }
}

/// The counts behind a binary field's rates.
#[derive(Default)]
struct Rates {
    positives: u64,
    true_positives: u64,
    negatives: u64,
    true_negatives: u64,
    judged: u64,
    judged_positive: u64,
}

impl Rates {
    /// Rogan & Gladen (1978), "Estimating prevalence from the results of a
    /// screening test", Am J Epidemiol 107:71–76: the true positive share
    /// p = (q + TNR − 1) / (TPR + TNR − 1), q the judge's positive share.
    /// Its variance by the delta method, q, TPR and TNR independent binomial
    /// shares (as in Reiczigel, Földi & Ózsvári 2010, "Exact confidence limits
    /// for prevalence of a disease with an imperfect diagnostic test",
    /// Epidemiol Infect 138:1674–1678):
    /// Var p = [q(1−q)/N + p²·TPR(1−TPR)/n_pos + (1−p)²·TNR(1−TNR)/n_neg]
    ///         / (TPR + TNR − 1)².
    /// `None` without unlabelled rows, without gold of either class, or when
    /// the judge is no better than chance (TPR + TNR ≤ 1, tested exactly on
    /// the counts so a rounding cannot divide by a near-zero).
    fn rogan_gladen(&self) -> Option<(f64, Interval)> {
        let q = ratio(self.judged_positive, self.judged)?;
        let tpr = ratio(self.true_positives, self.positives)?;
        let tnr = ratio(self.true_negatives, self.negatives)?;
        // TPR + TNR > 1  ⇔  tp·n_neg + tn·n_pos > n_pos·n_neg.
        let (pos, neg) = (u128::from(self.positives), u128::from(self.negatives));
        let better = u128::from(self.true_positives) * neg + u128::from(self.true_negatives) * pos;
        if better <= pos * neg {
            return None;
        }
        let youden = tpr + tnr - 1.0;
        let p = (q + tnr - 1.0) / youden;
        let variance = (q * (1.0 - q) / self.judged as f64
            + p * p * tpr * (1.0 - tpr) / self.positives as f64
            + (1.0 - p) * (1.0 - p) * tnr * (1.0 - tnr) / self.negatives as f64)
            / (youden * youden);
        let half = Z95 * variance.sqrt();
        Some((clip01(p), [clip01(p - half), clip01(p + half)]))
    }
}

/// Into [0, 1].
fn clip01(x: f64) -> f64 {
    x.clamp(0.0, 1.0)
}

/// Wilson score 95% interval of `successes` out of `n`; `None` when n is 0.
/// Wilson (1927), "Probable inference, the law of succession, and
/// statistical inference", JASA 22:209–212. Unlike the normal
/// approximation it stays inside [0, 1] and does not shrink to a point at
/// 0 or n successes.
pub fn wilson(successes: u64, n: u64) -> Option<Interval> {
    let share = ratio(successes.min(n), n)?;
    let n = n as f64;
    let z2 = Z95 * Z95;
    let denominator = 1.0 + z2 / n;
    let centre = (share + z2 / (2.0 * n)) / denominator;
    let half = Z95 * (share * (1.0 - share) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    Some([clip01(centre - half), clip01(centre + half)])
}

/// Gold-judge pairs of a numeric field. Pairs with a side that is not a
/// finite number are left out (`n` counts the rest).
pub fn ordinal(pairs: &[(f64, f64)]) -> Ordinal {
    let pairs = finite(pairs);
    if pairs.is_empty() {
        return Ordinal {
            n: 0,
            exact: 0.0,
            within_1: 0.0,
            mae: 0.0,
            bias: 0.0,
            weighted_kappa: None,
            spearman: None,
            confusion: None,
        };
    }
    Ordinal {
        n: pairs.len() as u64,
        exact: share(&pairs, |g, j| j == g),
        within_1: share(&pairs, |g, j| (j - g).abs() <= 1.0),
        mae: mean_difference(&pairs, f64::abs),
        bias: mean_difference(&pairs, |d| d),
        weighted_kappa: integer_scale(&pairs).and_then(|ints| quadratic_kappa(&ints)),
        spearman: spearman(&pairs),
        confusion: value_table(&pairs),
    }
}

/// The pairs whose both sides are finite numbers.
fn finite(pairs: &[(f64, f64)]) -> Vec<(f64, f64)> {
    pairs
        .iter()
        .copied()
        .filter(|(g, j)| g.is_finite() && j.is_finite())
        .collect()
}

/// Share of non-empty pairs (gold, judge) for which `hit` holds.
fn share(pairs: &[(f64, f64)], hit: impl Fn(f64, f64) -> bool) -> f64 {
    pairs.iter().filter(|&&(g, j)| hit(g, j)).count() as f64 / pairs.len() as f64
}

/// Mean of `f(judge − gold)` (|d| or d) over finite, non-empty pairs. Half
/// a difference of finite values is finite (and halving is exact above the
/// subnormals), so no term is infinite and the sum is never NaN; values
/// near ±f64::MAX could still overflow the sum or the doubled mean, which
/// is then saturated.
fn mean_difference(pairs: &[(f64, f64)], f: impl Fn(f64) -> f64) -> f64 {
    let n = pairs.len() as f64;
    let half_sum: f64 = pairs.iter().map(|&(g, j)| f(j / 2.0 - g / 2.0)).sum();
    (2.0 * (half_sum / n)).clamp(f64::MIN, f64::MAX)
}

/// The pairs as integers when every value is one (within i64) and the
/// scale max − min is at most `MAX_SCALE`.
fn integer_scale(pairs: &[(f64, f64)]) -> Option<Vec<(i64, i64)>> {
    let ints = pairs
        .iter()
        .map(|&(g, j)| Some((as_integer(g)?, as_integer(j)?)))
        .collect::<Option<Vec<_>>>()?;
    let values = ints.iter().flat_map(|&(g, j)| [g, j]);
    let (lo, hi) = (values.clone().min()?, values.max()?);
    (i128::from(hi) - i128::from(lo) <= i128::from(MAX_SCALE)).then_some(ints)
}

/// `x` as an i64 when it is a whole number in range.
fn as_integer(x: f64) -> Option<i64> {
    // 2^63 is exact in f64; `as` would saturate instead of refusing.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (x.fract() == 0.0 && (-LIMIT..LIMIT).contains(&x)).then_some(x as i64)
}

/// Most distinct values an ordinal field's gold × judge table is given for;
/// beyond that a heat table is unreadable.
const MAX_TABLE_VALUES: usize = 25;

/// Gold × judge counts over the distinct values of both sides, sorted
/// numerically; `None` with more than `MAX_TABLE_VALUES` of them.
fn value_table(pairs: &[(f64, f64)]) -> Option<Confusion> {
    let mut values: Vec<f64> = pairs.iter().flat_map(|&(g, j)| [g, j]).collect();
    // Finite values: partial_cmp is total, and −0 and 0 are one value.
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
    values.dedup_by(|a, b| a == b);
    if values.is_empty() || values.len() > MAX_TABLE_VALUES {
        return None;
    }
    let index = |x: f64| values.iter().position(|&v| v == x).unwrap_or(0);
    let mut matrix = vec![vec![0; values.len()]; values.len()];
    for &(g, j) in pairs {
        matrix[index(g)][index(j)] += 1;
    }
    Some(Confusion {
        labels: values.iter().map(|&v| number_label(v)).collect(),
        matrix,
    })
}

/// `3` for a whole number, otherwise the shortest decimal that reads back
/// as the same f64.
fn number_label(x: f64) -> String {
    match as_integer(x) {
        Some(i) => i.to_string(),
        None => x.to_string(),
    }
}

/// Spearman's ρ; `None` when either side is constant or there are fewer than 2 pairs.
/// It is Pearson's r of the ranks, tied values taking the mean of their
/// ranks (Spearman 1904, "The proof and measurement of association between
/// two things", Am J Psychol 15:72–101; as `scipy.stats.spearmanr`).
/// Non-finite pairs are left out.
pub fn spearman(pairs: &[(f64, f64)]) -> Option<f64> {
    let pairs = finite(pairs);
    let gold: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let judge: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    if pairs.len() < 2 || constant(&gold) || constant(&judge) {
        return None;
    }
    let r = pearson(&average_ranks(&gold), &average_ranks(&judge))?;
    Some(r.clamp(-1.0, 1.0))
}

fn constant(xs: &[f64]) -> bool {
    xs.iter().all(|&x| x == xs[0])
}

/// 1-based ranks, ties sharing the mean of the ranks they span.
fn average_ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].partial_cmp(&xs[b]).unwrap_or(Ordering::Equal));
    let mut ranks = vec![0.0; xs.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && xs[order[end]] == xs[order[start]] {
            end += 1;
        }
        // Sorted positions start..end hold ranks start+1 ..= end.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Pearson's r; `None` when a side has no spread.
fn pearson(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&x, &y) in xs.iter().zip(ys) {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    let denominator = (sxx * syy).sqrt();
    (denominator > 0.0).then(|| sxy / denominator)
}

/// Quadratic-weighted κ of integer pairs over the scale min..=max.
///
/// Cohen (1968), "Weighted kappa", Psychological Bulletin 70:213–220, with
/// disagreement weights w_ij = (i − j)²: κ = 1 − Σ w·C / Σ w·E, C the
/// gold × judge table over the scale and E = r·cᵀ / n its chance
/// expectation from the gold and judge totals r, c. Neither sum needs the
/// table: Σ w·C = Σ (g − j)² over the pairs, and
/// n·Σ w·E = Σ_ij (i − j)²·r_i·c_j = n·Σg² + n·Σj² − 2·Σg·Σj. Shifting every
/// value by the minimum changes neither and keeps the sums small exact
/// integers; `None` if they would overflow i128 (a scale near the whole i64
/// range) or κ is undefined (one value only on both sides).
pub fn quadratic_kappa(pairs: &[(i64, i64)]) -> Option<f64> {
    let lo = pairs.iter().flat_map(|&(g, j)| [g, j]).min()?;
    let [sum_g, sum_j, sum_gg, sum_jj, sum_dd] = power_sums(pairs, i128::from(lo))?;
    let n = pairs.len() as i128;
    let expected = n
        .checked_mul(sum_gg)?
        .checked_add(n.checked_mul(sum_jj)?)?
        .checked_sub(sum_g.checked_mul(sum_j)?.checked_mul(2)?)?;
    if expected == 0 {
        return None;
    }
    let observed = n.checked_mul(sum_dd)?;
    Some(1.0 - observed as f64 / expected as f64)
}

/// Σg, Σj, Σg², Σj², Σ(g−j)² of the pairs shifted by `lo`; `None` on overflow.
fn power_sums(pairs: &[(i64, i64)], lo: i128) -> Option<[i128; 5]> {
    let mut sums = [0i128; 5];
    for &(g, j) in pairs {
        let (g, j) = (i128::from(g) - lo, i128::from(j) - lo);
        let d = g - j;
        let terms = [
            g,
            j,
            g.checked_mul(g)?,
            j.checked_mul(j)?,
            d.checked_mul(d)?,
        ];
        for (sum, term) in sums.iter_mut().zip(terms) {
            *sum = sum.checked_add(term)?;
        }
    }
    Some(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Made by `tests/fixtures/gen/agreement_expected.py` with scikit-learn,
    /// scipy, numpy and statsmodels.
    const FIXTURE: &str = include_str!("../../tests/fixtures/agreement_expected.json");

    fn fixture(section: &str) -> Vec<Value> {
        let all: Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
        all[section].as_array().expect("a list of cases").clone()
    }

    fn strings(value: &Value) -> Vec<String> {
        value
            .as_array()
            .expect("a list")
            .iter()
            .map(|v| v.as_str().expect("a string").to_string())
            .collect()
    }

    fn string_pairs(case: &Value) -> Vec<(String, String)> {
        case["pairs"]
            .as_array()
            .expect("pairs")
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn as_refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
        pairs
            .iter()
            .map(|(g, j)| (g.as_str(), j.as_str()))
            .collect()
    }

    fn number_pairs(case: &Value) -> Vec<(f64, f64)> {
        case["pairs"]
            .as_array()
            .expect("pairs")
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
            .collect()
    }

    /// `actual` equals `expected` with every number within 1e-9 (relative
    /// above 1), a missing key read as null.
    fn assert_close(actual: &Value, expected: &Value, path: &str) {
        match (actual, expected) {
            (Value::Number(a), Value::Number(e)) => {
                let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
                assert!(
                    (a - e).abs() <= 1e-9 * e.abs().max(1.0),
                    "{path}: {a} != {e}"
                );
            }
            (Value::Array(a), Value::Array(e)) => {
                assert_eq!(a.len(), e.len(), "{path}: length");
                for (i, (a, e)) in a.iter().zip(e).enumerate() {
                    assert_close(a, e, &format!("{path}[{i}]"));
                }
            }
            (Value::Object(a), Value::Object(e)) => {
                for key in a.keys().chain(e.keys()) {
                    let (x, y) = (
                        a.get(key).unwrap_or(&Value::Null),
                        e.get(key).unwrap_or(&Value::Null),
                    );
                    assert_close(x, y, &format!("{path}.{key}"));
                }
            }
            _ => assert_eq!(actual, expected, "{path}"),
        }
    }

    /// serde_json writes NaN and infinities as null, so they are looked for
    /// in the Debug text instead.
    fn assert_finite(value: &impl std::fmt::Debug) {
        let text = format!("{value:?}");
        assert!(
            !text.contains("NaN") && !text.contains("inf"),
            "not finite: {text}"
        );
    }

    fn check<T: Serialize + std::fmt::Debug>(actual: &T, case: &Value) {
        assert_finite(actual);
        let name = case["name"].as_str().unwrap_or("case");
        assert_close(
            &serde_json::to_value(actual).unwrap(),
            &case["expected"],
            name,
        );
    }

    #[test]
    fn categorical_matches_scikit_learn() {
        for case in fixture("categorical") {
            let pairs = string_pairs(&case);
            let n = pairs.len();
            assert_eq!(
                u64::from(resamples_for(n)),
                case["resamples"].as_u64().unwrap()
            );
            check(
                &categorical(&as_refs(&pairs), &strings(&case["order"])),
                &case,
            );
        }
    }

    #[test]
    fn cohen_kappa_matches_scikit_learn() {
        for case in fixture("categorical") {
            let pairs = string_pairs(&case);
            let kappa = cohen_kappa(&as_refs(&pairs));
            assert_close(
                &serde_json::to_value(kappa).unwrap(),
                &case["expected"]["kappa"],
                "kappa",
            );
        }
    }

    #[test]
    fn binary_matches_the_formulas() {
        for case in fixture("binary") {
            let pairs = string_pairs(&case);
            let unlabelled = (
                case["unlabelled"][0].as_u64().unwrap(),
                case["unlabelled"][1].as_u64().unwrap(),
            );
            check(
                &binary(
                    &as_refs(&pairs),
                    case["positive"].as_str().unwrap(),
                    unlabelled,
                ),
                &case,
            );
        }
    }

    #[test]
    fn ordinal_matches_scikit_learn_and_scipy() {
        for case in fixture("ordinal") {
            check(&ordinal(&number_pairs(&case)), &case);
        }
    }

    #[test]
    fn kappa_interval_matches_the_python_bootstrap() {
        for case in fixture("kappa_interval") {
            let pairs = string_pairs(&case);
            let seed = case["seed"].as_u64().unwrap();
            let resamples = case["resamples"].as_u64().unwrap() as u32;
            check(&kappa_interval(&as_refs(&pairs), seed, resamples), &case);
        }
    }

    #[test]
    fn wilson_matches_statsmodels() {
        for case in fixture("wilson") {
            let (s, n) = (
                case["successes"].as_u64().unwrap(),
                case["n"].as_u64().unwrap(),
            );
            check(&wilson(s, n), &case);
        }
    }

    #[test]
    fn splitmix64_matches_the_reference_stream() {
        for case in fixture("splitmix64") {
            let mut rng = SplitMix64::new(case["seed"].as_u64().unwrap());
            for expected in case["outputs"].as_array().unwrap() {
                assert_eq!(rng.next_u64(), expected.as_u64().unwrap());
            }
        }
    }

    #[test]
    fn resamples_shrink_for_large_sets_but_not_below_200() {
        for case in fixture("resamples_for") {
            let n = case["n"].as_u64().unwrap() as usize;
            assert_eq!(
                u64::from(resamples_for(n)),
                case["resamples"].as_u64().unwrap(),
                "n = {n}"
            );
        }
        assert_eq!(resamples_for(usize::MAX), MIN_RESAMPLES);
    }

    #[test]
    fn the_bootstrap_is_deterministic() {
        let pairs: Vec<(&str, &str)> = (0..200)
            .map(|i| match i % 7 {
                0 | 1 => ("a", "b"),
                2 | 3 => ("b", "b"),
                4 => ("c", "a"),
                _ => ("a", "a"),
            })
            .collect();
        let first = kappa_interval(&pairs, BOOTSTRAP_SEED, 300);
        assert!(first.is_some());
        assert_eq!(first, kappa_interval(&pairs, BOOTSTRAP_SEED, 300));
        assert_ne!(first, kappa_interval(&pairs, BOOTSTRAP_SEED + 1, 300));
        assert_eq!(categorical(&pairs, &[]), categorical(&pairs, &[]));
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], [0, 2.5, 50, 97.5, 100])
        let values = [1.0, 2.0, 3.0, 4.0];
        let table = [
            (0.0, 1.0),
            (2.5, 1.075),
            (50.0, 2.5),
            (97.5, 3.925),
            (100.0, 4.0),
        ];
        for (q, expected) in table {
            assert!((percentile(&values, q) - expected).abs() < 1e-12, "q = {q}");
        }
        assert_eq!(percentile(&[5.0], 97.5), 5.0);
    }

    #[test]
    fn empty_categorical_is_zero_and_empty() {
        let order = vec!["yes".to_string(), "no".to_string()];
        let c = categorical(&[], &order);
        assert_eq!(
            (c.n, c.accuracy, c.baseline, c.kappa, c.kappa_ci),
            (0, 0.0, 0.0, None, None)
        );
        assert!(
            c.classes.is_empty() && c.confusion.labels.is_empty() && c.confusion.matrix.is_empty()
        );
        assert_eq!(c.baseline_label, "");
    }

    #[test]
    fn labels_follow_the_declared_order_then_sorted_values() {
        let order = vec!["z".to_string(), "a".to_string(), "unused".to_string()];
        let c = categorical(&[("m", "a"), ("b", "z"), ("z", "z")], &order);
        assert_eq!(c.confusion.labels, ["z", "a", "unused", "b", "m"]);
        let unused = &c.classes[2];
        assert_eq!(
            (unused.support, unused.precision, unused.recall, unused.f1),
            (0, None, None, None)
        );
        // Gold z, b and m once each: the tie goes to the first label.
        assert_eq!(c.baseline_label, "z");
    }

    #[test]
    fn kappa_table() {
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let table: [(Pairs, Option<f64>); 6] = [
            (&[], None),
            (&[("a", "a")], None),
            (&[("a", "a"), ("a", "a")], None),
            (&[("a", "b")], Some(0.0)),
            (&[("a", "a"), ("b", "b")], Some(1.0)),
            (&[("a", "b"), ("b", "a")], Some(-1.0)),
        ];
        for (pairs, expected) in table {
            assert_eq!(cohen_kappa(pairs), expected, "{pairs:?}");
        }
    }

    #[test]
    fn kappa_interval_needs_half_the_resamples() {
        assert_eq!(kappa_interval(&[], 1, 100), None);
        assert_eq!(kappa_interval(&[("a", "a")], 1, 100), None);
        assert_eq!(kappa_interval(&[("a", "b")], 1, 0), None);
        assert_eq!(kappa_interval(&[("a", "b")], 1, 10), Some([0.0, 0.0]));
    }

    #[test]
    fn binary_edges() {
        // No gold positive: TPR and the correction are undefined.
        let b = binary(&[("no", "no"), ("no", "yes")], "yes", (3, 10));
        assert_eq!((b.tpr, b.tpr_ci, b.tnr), (None, None, Some(0.5)));
        assert_eq!(
            (b.judge_positive_rate, b.corrected_positive_rate),
            (Some(0.3), None)
        );
        // More positives than answers is saturated, not a rate above 1.
        let b = binary(&[("yes", "yes"), ("no", "no")], "yes", (12, 10));
        assert_eq!(b.judge_positive_rate, Some(1.0));
        assert_eq!(b.corrected_positive_rate, Some(1.0));
        // A judge that is always wrong (TPR + TNR = 0) corrects nothing.
        let b = binary(&[("yes", "no"), ("no", "yes")], "yes", (1, 2));
        assert_eq!((b.tpr, b.tnr, b.corrected_ci), (Some(0.0), Some(0.0), None));
        assert_eq!(wilson(0, 0), None);
        assert_eq!(wilson(5, 3), wilson(3, 3));
    }

    #[test]
    fn ordinal_edges() {
        let empty = ordinal(&[]);
        assert_eq!(
            (empty.n, empty.exact, empty.mae, empty.bias),
            (0, 0.0, 0.0, 0.0)
        );
        assert_eq!(
            (empty.weighted_kappa, empty.spearman, empty.confusion),
            (None, None, None)
        );
        // Non-finite pairs are left out.
        let o = ordinal(&[(1.0, f64::NAN), (2.0, 3.0), (f64::INFINITY, 1.0)]);
        assert_eq!((o.n, o.mae, o.bias), (1, 1.0, 1.0));
        // Differences near f64::MAX saturate instead of overflowing.
        let o = ordinal(&[(-f64::MAX, f64::MAX)]);
        assert_eq!(
            (o.mae, o.bias, o.weighted_kappa),
            (f64::MAX, f64::MAX, None)
        );
        // 26 distinct values: no table.
        let many: Vec<(f64, f64)> = (0..13).map(|i| (f64::from(i), f64::from(i + 13))).collect();
        assert_eq!(ordinal(&many).confusion, None);
        assert!(ordinal(&many[..12]).confusion.is_some());
        // -0 and 0 are one value, labelled 0; halves keep their decimals.
        let o = ordinal(&[(-0.0, 0.0), (0.5, 2.0)]);
        let table = o.confusion.unwrap();
        assert_eq!(table.labels, ["0", "0.5", "2"]);
        assert_eq!(table.matrix, [[1, 0, 0], [0, 0, 1], [0, 0, 0]]);
    }

    #[test]
    fn quadratic_kappa_and_spearman_edges() {
        assert_eq!(quadratic_kappa(&[]), None);
        assert_eq!(quadratic_kappa(&[(3, 3), (3, 3)]), None);
        assert_eq!(quadratic_kappa(&[(1, 1), (2, 2)]), Some(1.0));
        // A scale spanning all of i64 overflows the exact sums: undefined, not wrong.
        assert_eq!(quadratic_kappa(&[(i64::MIN, i64::MAX), (0, 0)]), None);
        assert_eq!(spearman(&[(1.0, 2.0)]), None);
        assert_eq!(spearman(&[(1.0, 2.0), (1.0, 3.0)]), None);
        assert_eq!(spearman(&[(1.0, 2.0), (2.0, 1.0)]), Some(-1.0));
        assert_eq!(
            average_ranks(&[10.0, 20.0, 10.0, 30.0]),
            [1.5, 3.0, 1.5, 4.0]
        );
    }

    /// Degenerate inputs never give NaN or an infinity.
    #[test]
    fn degenerate_inputs_stay_finite() {
        let categorical_inputs: [&[(&str, &str)]; 5] = [
            &[],
            &[("a", "b")],
            &[("a", "a"), ("a", "a")],
            &[("a", "b"), ("b", "a"), ("a", "b")],
            &[("a", "a"), ("a", "b"), ("a", "c")],
        ];
        let order = vec!["a".to_string(), "b".to_string(), "d".to_string()];
        for pairs in categorical_inputs {
            assert_finite(&categorical(pairs, &order));
            assert_finite(&kappa_interval(pairs, 3, 50));
            for unlabelled in [(0, 0), (0, 5), (5, 5), (9, 5)] {
                assert_finite(&binary(pairs, "a", unlabelled));
            }
        }
        let ordinal_inputs: [&[(f64, f64)]; 6] = [
            &[],
            &[(1.0, 1.0)],
            &[(2.0, 2.0), (2.0, 2.0)],
            &[(1.0, 5.0), (5.0, 1.0)],
            &[(1.0, 3.0), (2.0, 3.0), (4.0, 3.0)],
            &[
                (f64::NAN, 1.0),
                (f64::NEG_INFINITY, f64::INFINITY),
                (f64::MAX, -f64::MAX),
            ],
        ];
        for pairs in ordinal_inputs {
            assert_finite(&ordinal(pairs));
        }
        for (s, n) in [(0, 1), (1, 1), (0, u64::MAX), (u64::MAX, u64::MAX)] {
            assert_finite(&wilson(s, n));
        }
    }
}
