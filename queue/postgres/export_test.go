package postgres

// Crash stops q as a killed process would: nothing pending is committed,
// no lease is handed back, its heartbeat stops and its connections close.
func (q *Queue) Crash() { q.crash() }

// Commits counts the committer's transactions.
func (q *Queue) Commits() int64 { return q.commits.Load() }

// PauseHeartbeat stops (or resumes) q's heartbeats, as a stalled process
// would.
func (q *Queue) PauseHeartbeat(paused bool) { q.paused.Store(paused) }
