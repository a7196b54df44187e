package admin

import (
	"time"

	"github.com/shoal-mirror/shoal/adminapi"
)

// timelineMinutes is how far back the per-minute answers by source go (the console's chart).
const timelineMinutes = 60

// timeline counts manifest and blob answers by source per minute, over the last hour, in a
// fixed ring: recording costs one map update under the metrics lock and nothing runs when no
// one reads it. The zero value is ready; the caller holds the lock.
type timeline struct {
	ring [timelineMinutes]minuteBucket
}

type minuteBucket struct {
	minute   int64 // Unix minute this bucket holds; 0: empty
	requests map[string]int64
	bytes    map[string]int64
}

func (t *timeline) add(now time.Time, source string, n int64) {
	m := now.Unix() / 60
	b := &t.ring[m%timelineMinutes]
	if b.minute != m {
		*b = minuteBucket{minute: m, requests: map[string]int64{}, bytes: map[string]int64{}}
	}
	b.requests[source]++
	b.bytes[source] += n
}

// minutes returns the last hour ending with now's minute, oldest first.
func (t *timeline) minutes(now time.Time) adminapi.Timeline {
	cur := now.Unix() / 60
	out := adminapi.Timeline{Minutes: make([]adminapi.TimelineMinute, 0, timelineMinutes)}
	for m := cur - timelineMinutes + 1; m <= cur; m++ {
		tm := adminapi.TimelineMinute{Start: time.Unix(m*60, 0).UTC(), Requests: map[string]int64{}, Bytes: map[string]int64{}}
		if b := &t.ring[m%timelineMinutes]; b.minute == m {
			for k, v := range b.requests {
				tm.Requests[k] = v
			}
			for k, v := range b.bytes {
				tm.Bytes[k] = v
			}
		}
		out.Minutes = append(out.Minutes, tm)
	}
	return out
}
