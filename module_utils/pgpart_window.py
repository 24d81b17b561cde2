# -*- coding: utf-8 -*-
"""The low-traffic window: is now inside it, when does it close, when does it open next.

A window is a dict {days, start, end, timezone}:

  days      weekdays the window STARTS on (mon..sun, full names accepted); empty or
            missing means every day
  start     "HH:MM" local time in `timezone`
  end       "HH:MM"; earlier than start means the window crosses midnight and ends the
            next day (sat 23:00-02:00 is Saturday night into Sunday); equal to start
            means 24 hours; "24:00" is accepted as the end of the day
  timezone  an IANA name (default UTC); daylight saving time is honoured

No window (None) means any time is fine.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import re

try:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    HAS_ZONEINFO = True
except ImportError:  # pragma: no cover - Python < 3.9
    HAS_ZONEINFO = False

DAYS = ('mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun')
FULL_DAYS = ('monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday', 'sunday')
TIME = re.compile(r'^([01]?\d|2[0-4]):([0-5]\d)$')


class WindowError(ValueError):
    pass


def parse_time(text, what, allow_24=False):
    match = TIME.match(str(text).strip())
    if not match:
        raise WindowError('%s must be a time "HH:MM", not %r' % (what, text))
    hours, minutes = int(match.group(1)), int(match.group(2))
    if hours == 24 and (minutes or not allow_24):
        raise WindowError('%s must be a time "HH:MM" between 00:00 and 23:59%s, not %r'
                          % (what, ' (or 24:00)' if allow_24 else '', text))
    return hours * 60 + minutes


def parse_days(days):
    if days is None or days == [] or days == '':
        return list(range(7))
    if isinstance(days, str):
        days = [d for d in re.split(r'[\s,]+', days) if d]
    parsed = []
    for day in days:
        name = str(day).strip().lower()
        if name in DAYS:
            parsed.append(DAYS.index(name))
        elif name in FULL_DAYS:
            parsed.append(FULL_DAYS.index(name))
        else:
            raise WindowError('unknown day %r in the window: use mon, tue, wed, thu, fri, sat, sun' % (day,))
    return sorted(set(parsed))


def zone(name):
    if not HAS_ZONEINFO:
        raise WindowError('time zones need Python 3.9 or newer (zoneinfo)')
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, KeyError):
        raise WindowError('unknown time zone %r (an IANA name such as UTC or Europe/Berlin; install the tzdata '
                          'package if the system has no time zone database)' % (name,))


def normalize(window):
    """The window as {days: [...names], start, end, timezone, minutes: (start, end), weekdays: [...]} or None."""
    if window is None or window == {} or window == '' or window in ('none', 'None'):
        return None
    if not isinstance(window, dict):
        raise WindowError('the window must be a dict {days, start, end, timezone} or none, not %r' % (window,))
    unknown = sorted(set(window) - set(['days', 'start', 'end', 'timezone']))
    if unknown:
        raise WindowError('unknown key(s) in the window: %s (expected days, start, end, timezone)' % ', '.join(unknown))
    for key in ('start', 'end'):
        if window.get(key) in (None, ''):
            raise WindowError('the window needs %s ("HH:MM")' % key)
    weekdays = parse_days(window.get('days'))
    start = parse_time(window['start'], 'start')
    end = parse_time(window['end'], 'end', allow_24=True)
    tz_name = window.get('timezone') or 'UTC'
    zone(tz_name)
    return {'days': [DAYS[d] for d in weekdays], 'start': '%02d:%02d' % divmod(start, 60),
            'end': '%02d:%02d' % divmod(end, 60), 'timezone': tz_name, '_weekdays': weekdays,
            '_start': start, '_end': end}


def parse_now(text):
    """An ISO 8601 instant with an offset (a 'Z' suffix is accepted)."""
    value = str(text).strip()
    if value.endswith('Z') or value.endswith('z'):
        value = value[:-1] + '+00:00'
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise WindowError('now must be an ISO 8601 date and time with an offset, e.g. 2026-01-03T02:30:00+00:00, '
                          'not %r' % (text,))
    if moment.tzinfo is None:
        raise WindowError('now needs a UTC offset (e.g. +00:00 or Z): %r' % (text,))
    return moment


def _at(tz, day, minutes):
    """The instant of local `minutes` after midnight of local date `day` (24:00 = next midnight)."""
    base = datetime.datetime(day.year, day.month, day.day, tzinfo=tz)
    if minutes >= 24 * 60:
        base = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time(0), tzinfo=tz)
        minutes -= 24 * 60
    return base.replace(hour=minutes // 60, minute=minutes % 60)


def occurrences(win, around):
    """(opens, closes) of the windows starting on local dates around `around` (8 days back to 8 ahead)."""
    tz = zone(win['timezone'])
    local_day = around.astimezone(tz).date()
    result = []
    for offset in range(-8, 9):
        day = local_day + datetime.timedelta(days=offset)
        if day.weekday() not in win['_weekdays']:
            continue
        opens = _at(tz, day, win['_start'])
        end_day = day if win['_end'] > win['_start'] else day + datetime.timedelta(days=1)
        closes = _at(tz, end_day, win['_end'])
        result.append((opens, closes))
    return result


def describe(win):
    if win is None:
        return 'no low-traffic window (any time)'
    days = 'every day' if len(win['_weekdays']) == 7 else ', '.join(win['days'])
    crossing = ' (ends the next day)' if win['_end'] <= win['_start'] else ''
    return '%s %s-%s %s%s' % (days, win['start'], win['end'], win['timezone'], crossing)


def evaluate(window, now=None, ignore=False, min_minutes_left=0):
    """Where `now` stands relative to the window; never raises for being outside (see `allowed`)."""
    win = normalize(window)
    moment = parse_now(now) if now else datetime.datetime.now(datetime.timezone.utc)
    public = None if win is None else dict((k, v) for k, v in win.items() if not k.startswith('_'))
    result = {'window': public, 'description': describe(win), 'ignored': False, 'opens_at': None,
              'closes_at': None, 'minutes_left': None, 'minutes_until_open': None}
    if win is None:
        result.update(inside=True, allowed=True, now=moment.isoformat(),
                      msg='no low-traffic window is configured: any time is allowed')
        return result
    tz = zone(win['timezone'])
    local_now = moment.astimezone(tz)
    result['now'] = local_now.isoformat()
    spans = occurrences(win, moment)
    current = [s for s in spans if s[0] <= moment < s[1]]
    if current:
        closes = max(s[1] for s in current)
        left = (closes - moment).total_seconds() / 60.0
        result.update(inside=True, closes_at=closes.astimezone(tz).isoformat(), minutes_left=round(left, 1))
        if left < min_minutes_left:
            result['allowed'] = bool(ignore)
            result['ignored'] = bool(ignore)
            result['msg'] = ('inside the low-traffic window (%s) but it closes at %s, in %.0f minutes; %d minutes are '
                             'required%s' % (result['description'], result['closes_at'], left, min_minutes_left,
                                             ': proceeding because the window check is overridden' if ignore else ''))
        else:
            result['allowed'] = True
            result['msg'] = 'inside the low-traffic window (%s) until %s (%.0f minutes left)' % (
                result['description'], result['closes_at'], left)
        return result
    upcoming = sorted(s[0] for s in spans if s[0] > moment)
    opens = upcoming[0] if upcoming else None
    result.update(inside=False, allowed=bool(ignore), ignored=bool(ignore))
    if opens is not None:
        result['opens_at'] = opens.astimezone(tz).isoformat()
        result['minutes_until_open'] = round((opens - moment).total_seconds() / 60.0, 1)
    result['msg'] = 'outside the low-traffic window (%s): it is %s there; the window opens next at %s%s' % (
        result['description'], local_now.strftime('%a %Y-%m-%d %H:%M %Z'), result['opens_at'],
        '; proceeding because the window check is overridden' if ignore else '')
    return result
