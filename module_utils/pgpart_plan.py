# -*- coding: utf-8 -*-
"""The partition plan: which monthly ranges cover every existing row, and object names.

Months are UTC calendar months written 'YYYY-MM'.  Every plan has one lower partition
`<t>_phistory` from MINVALUE up to the first dense month, so sparse ancient history shares
one partition and a late row with an old timestamp still has a home; then one partition
per month `<t>_pYYYYMM` up to the current month plus `premake` future months (or the
latest month that already holds rows).  There is no DEFAULT partition (see
postgres-traps.md #15).  Bounds are written with an explicit UTC offset.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib

MAX_IDENTIFIER_BYTES = 63
HISTORY_SUFFIX = '_phistory'
# A month holding fewer rows than this share of the median month is sparse; this many
# sparse months in a row separate old history from the dense months.
SPARSE_SHARE = 0.1
MAX_SPARSE_RUN = 3


def month_add(month, n):
    year, mon = int(month[:4]), int(month[5:7])
    index = year * 12 + (mon - 1) + n
    return '%04d-%02d' % (index // 12, index % 12 + 1)


def months_between(first, last):
    """Inclusive list of months from first to last."""
    out, month = [], first
    while month <= last:
        out.append(month)
        month = month_add(month, 1)
    return out


def bound_literal(month, key_type):
    """The partition bound for the first instant of a month, for the key's type."""
    if month is None:
        return None
    if key_type == 'date':
        return '%s-01' % month
    if key_type == 'timestamp with time zone':
        return '%s-01 00:00:00+00' % month
    return '%s-01 00:00:00' % month


def fit_name(base, suffix=''):
    """base + suffix within PostgreSQL's 63-byte identifier limit, stable and unique.

    Too-long names keep a readable prefix and gain a hash of the full name.
    """
    name = base + suffix
    if len(name.encode('utf-8')) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.md5(name.encode('utf-8')).hexdigest()[:8]
    room = MAX_IDENTIFIER_BYTES - len(suffix.encode('utf-8')) - len(digest) - 1
    prefix = base.encode('utf-8')[:room].decode('utf-8', 'ignore')
    return '%s_%s%s' % (prefix, digest, suffix)


def partition_name(table, month):
    return '%s_p%s' % (table, month.replace('-', ''))


def names_for(table):
    """Names of everything a conversion creates or renames, derived from the table name."""
    return {
        'new': table + '_new',          # the partitioned table while it is being filled
        'old': table + '_old',          # the original table after the swap, until cleanup
        'history': table + HISTORY_SUFFIX,
    }


def longest_suffix():
    return max(len(HISTORY_SUFFIX), len('_p000000'), len('_old'), len('_new'))


def dense_start(month_counts, current_month):
    """First month of the dense run of months that ends at the latest populated month.

    Walking back from there, a month is sparse when it holds less than SPARSE_SHARE of the
    median populated month; MAX_SPARSE_RUN sparse or empty months in a row end the run.
    Everything before the run is history.  With no rows at all: the current month.
    """
    populated = sorted(m for m, c in month_counts.items() if c > 0 and m <= current_month)
    if not populated:
        return current_month
    counts = sorted(month_counts[m] for m in populated)
    threshold = max(1, counts[len(counts) // 2] * SPARSE_SHARE)
    start, sparse_run, month = populated[-1], 0, populated[-1]
    while month >= populated[0]:
        if month_counts.get(month, 0) >= threshold:
            start, sparse_run = month, 0
        else:
            sparse_run += 1
            if sparse_run >= MAX_SPARSE_RUN:
                break
        month = month_add(month, -1)
    return start


def build_plan(table, key, key_type, month_counts, current_month, premake, max_future_months):
    """(plan, reasons): the partitions covering every row, or why no plan is possible.

    month_counts maps 'YYYY-MM' to the number of rows whose key falls in that month.
    """
    reasons = []
    first = dense_start(month_counts, current_month)
    first = min(first, current_month)
    last_data = max(month_counts) if month_counts else current_month
    limit = month_add(current_month, max_future_months)
    if last_data > limit:
        late = sum(c for m, c in month_counts.items() if m > limit)
        reasons.append(
            '%d rows have %s in or after %s, more than %d months ahead; fix those rows or raise '
            'max_future_months' % (late, key, month_add(limit, 1), max_future_months))
    last = max(month_add(current_month, premake), min(last_data, limit))
    names = names_for(table)
    partitions = [{'name': names['history'], 'from': None, 'to': first,
                   'rows': sum(c for m, c in month_counts.items() if m < first)}]
    for month in months_between(first, last):
        partitions.append({'name': partition_name(table, month), 'from': month,
                           'to': month_add(month, 1), 'rows': month_counts.get(month, 0)})
    plan = {
        'key': key, 'key_type': key_type, 'interval': 'month',
        'current_month': current_month, 'premake': premake,
        'dense_start': first, 'covers_until': month_add(last, 1),
        'new_table': names['new'], 'old_table': names['old'],
        'partitions': partitions,
    }
    return plan, reasons


def months_to_add(existing_last_month, current_month, premake):
    """Months a maintenance run must create so coverage reaches current + premake."""
    target = month_add(current_month, premake)
    if existing_last_month >= target:
        return []
    return months_between(month_add(existing_last_month, 1), target)
