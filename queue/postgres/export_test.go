package postgres

// Crash stops q as a killed process would: nothing pending is committed,
// no lease is handed back, its heartbeat stops and its connections close.
func (q *Queue) Crash() { q.crash() }
