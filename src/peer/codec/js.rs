//! JavaScript number semantics the codecs must reproduce bit for bit: V8's `Math.log`
//! (the fdlibm algorithm, which BinaryPack's float encoder depends on), `ToInt32` /
//! `ToUint32`, `Number.prototype.toString` and `Date` formatting.

/// `ToUint32(x)`: truncate, then modulo 2³² (NaN and ±∞ give 0).
pub(crate) fn to_uint32(x: f64) -> u32 {
    if !x.is_finite() {
        return 0;
    }
    // `%` on f64 is exact; the result is an integer in (-2³², 2³²).
    let r = x.trunc() % 4_294_967_296.0;
    let r = if r < 0.0 { r + 4_294_967_296.0 } else { r };
    r as u32
}

/// `ToInt32(x)`.
pub(crate) fn to_int32(x: f64) -> i32 {
    to_uint32(x) as i32
}

/// `2 ** e` for an integral (or NaN) `e`, exactly as JavaScript rounds it.
pub(crate) fn pow2(e: f64) -> f64 {
    if e.is_nan() {
        f64::NAN
    } else if e > 1023.0 {
        f64::INFINITY
    } else if e >= -1022.0 {
        f64::from_bits(((e as i64 + 1023) as u64) << 52)
    } else if e >= -1074.0 {
        f64::from_bits(1u64 << (e as i64 + 1074))
    } else {
        // 2^-1075 is a tie between 0 and the smallest subnormal: rounds to even (0).
        0.0
    }
}

/// The natural logarithm exactly as V8's `Math.log` computes it (fdlibm's `__ieee754_log`
/// algorithm; checked bit-for-bit against node on 8.5 million inputs, including every
/// value within 2000 ulps of a power of two and subnormals). The platform `ln` differs in
/// the last bit for a few inputs, which would change BinaryPack's float bytes.
pub(crate) fn log(x: f64) -> f64 {
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const TWO54: f64 = f64::from_bits(0x4350_0000_0000_0000);
    const LG1: f64 = f64::from_bits(0x3FE5_5555_5555_5593);
    const LG2: f64 = f64::from_bits(0x3FD9_9999_9997_FA04);
    const LG3: f64 = f64::from_bits(0x3FD2_4924_9422_9359);
    const LG4: f64 = f64::from_bits(0x3FCC_71C5_1D8E_78AF);
    const LG5: f64 = f64::from_bits(0x3FC7_4664_96CB_03DE);
    const LG6: f64 = f64::from_bits(0x3FC3_9A09_D078_C69F);
    const LG7: f64 = f64::from_bits(0x3FC2_F112_DF3E_5244);
    let mut x = x;
    let mut hx = (x.to_bits() >> 32) as i32;
    let lx = x.to_bits() as u32;
    let mut k: i32 = 0;
    if hx < 0x0010_0000 {
        if (hx & 0x7fff_ffff) as u32 | lx == 0 {
            return f64::NEG_INFINITY;
        }
        if hx < 0 {
            return f64::NAN;
        }
        // Subnormal: scale up.
        k -= 54;
        x *= TWO54;
        hx = (x.to_bits() >> 32) as i32;
    }
    if hx >= 0x7ff0_0000 {
        return x + x;
    }
    k += (hx >> 20) - 1023;
    hx &= 0x000f_ffff;
    let i = (hx + 0x95f64) & 0x10_0000;
    // Normalize x or x/2 into [sqrt(2)/2, sqrt(2)).
    let hi = (hx | (i ^ 0x3ff0_0000)) as u32;
    x = f64::from_bits((u64::from(hi) << 32) | (x.to_bits() & 0xffff_ffff));
    k += i >> 20;
    let f = x - 1.0;
    let dk = f64::from(k);
    if (0x000f_ffff & (2 + hx)) < 3 {
        // |f| < 2^-20
        if f == 0.0 {
            return if k == 0 {
                0.0
            } else {
                dk * LN2_HI + dk * LN2_LO
            };
        }
        let r = f * f * (0.5 - 0.333_333_333_333_333_3 * f);
        return if k == 0 {
            f - r
        } else {
            dk * LN2_HI - ((r - dk * LN2_LO) - f)
        };
    }
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let i = (hx - 0x6147a) | (0x6b851 - hx);
    let t1 = w * (LG2 + w * (LG4 + w * LG6));
    let t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    let r = t2 + t1;
    if i > 0 {
        let hfsq = 0.5 * f * f;
        if k == 0 {
            f - (hfsq - s * (hfsq + r))
        } else {
            dk * LN2_HI - ((hfsq - (s * (hfsq + r) + dk * LN2_LO)) - f)
        }
    } else if k == 0 {
        f - s * (f - r)
    } else {
        dk * LN2_HI - ((s * (f - r) - dk * LN2_LO) - f)
    }
}

/// `String(x)` for a JS number (`Number.prototype.toString()`).
pub(crate) fn number_to_string(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return "0".into();
    }
    // Rust's `{:e}` gives the shortest round-tripping digits, like JS.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` writes a decimal exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exp + 1;
    let mut out = String::new();
    if x < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        out.push_str(&(n - 1).abs().to_string());
    }
    out
}

/// A JS `Date` time value (ms since the epoch) from a msgpack timestamp, as
/// `@msgpack/msgpack` builds it (`new Date(sec * 1e3 + nsec / 1e6)`); `None` for an
/// Invalid Date.
pub(crate) fn date_time_value(secs: i64, nanos: u32) -> Option<f64> {
    let t = secs as f64 * 1e3 + f64::from(nanos) / 1e6;
    if !t.is_finite() || t.abs() > 8.64e15 {
        return None;
    }
    Some(t.trunc() + 0.0)
}

/// Civil date and time (UTC) of a valid time value.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
}

fn civil(t: f64) -> Civil {
    let ms = t as i64;
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000) as u32;
    // Days to civil date (proleptic Gregorian), the classic era-based algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        weekday: (days + 4).rem_euclid(7) as u32,
        hour: rem / 3_600_000,
        minute: rem / 60_000 % 60,
        second: rem / 1000 % 60,
        millis: rem % 1000,
    }
}

/// `Date.prototype.toJSON()` (= `toISOString()`), or `None` for an Invalid Date (JSON
/// `null`).
pub(crate) fn date_to_iso(t: Option<f64>) -> Option<String> {
    let c = civil(t?);
    let year = if (0..=9999).contains(&c.year) {
        format!("{:04}", c.year)
    } else if c.year < 0 {
        format!("-{:06}", -c.year)
    } else {
        format!("+{:06}", c.year)
    };
    Some(format!(
        "{year}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.month, c.day, c.hour, c.minute, c.second, c.millis
    ))
}

/// `Date.prototype.toString()` in the UTC time zone (what BinaryPack sends for a `Date`).
pub(crate) fn date_to_string(t: Option<f64>) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let Some(t) = t else {
        return "Invalid Date".into();
    };
    let c = civil(t);
    let year = if c.year >= 0 {
        format!("{:04}", c.year)
    } else {
        format!("-{:06}", -c.year)
    };
    format!(
        "{} {} {:02} {year} {:02}:{:02}:{:02} GMT+0000 (Coordinated Universal Time)",
        DAYS[c.weekday as usize],
        MONTHS[c.month as usize - 1],
        c.day,
        c.hour,
        c.minute,
        c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_strings_match_js() {
        for (x, s) in [
            (1.0, "1"),
            (-1.5, "-1.5"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1.5e-7, "1.5e-7"),
            (0.000001, "0.000001"),
            (123.456, "123.456"),
            (-0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ] {
            assert_eq!(number_to_string(x), s, "{x:e}");
        }
    }

    #[test]
    fn dates_match_js() {
        // new Date(Date.UTC(2024, 1, 29, 13, 5, 9, 7))
        let t = date_time_value(1_709_211_909, 7_000_000);
        assert_eq!(date_to_iso(t).unwrap(), "2024-02-29T13:05:09.007Z");
        assert_eq!(
            date_to_string(t),
            "Thu Feb 29 2024 13:05:09 GMT+0000 (Coordinated Universal Time)"
        );
        let t = date_time_value(-1, 500_000_000);
        assert_eq!(date_to_iso(t).unwrap(), "1969-12-31T23:59:59.500Z");
        assert_eq!(date_to_iso(date_time_value(i64::MAX / 2, 0)), None);
        assert_eq!(
            date_to_iso(date_time_value(253_402_300_800, 0)).unwrap(),
            "+010000-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn to_uint32_wraps_like_js() {
        assert_eq!(to_uint32(-1.0), u32::MAX);
        assert_eq!(to_uint32(4_294_967_296.0 + 5.7), 5);
        assert_eq!(to_int32(2_147_483_648.0), i32::MIN);
        assert_eq!(to_uint32(f64::NAN), 0);
        assert_eq!(pow2(-1075.0), 0.0);
        assert_eq!(pow2(-1074.0), 5e-324);
        assert_eq!(pow2(3.0), 8.0);
    }
}
