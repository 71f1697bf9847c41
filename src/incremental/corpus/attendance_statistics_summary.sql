 WITH session_stats AS (
         SELECT ts.category_id,
            ts.season_id,
            count(*) AS total_sessions,
            count(*) FILTER (WHERE (ts.status = 'done'::text)) AS completed_sessions,
            count(*) FILTER (WHERE (ts.status = 'planned'::text)) AS planned_sessions,
            count(*) FILTER (WHERE (ts.status = 'cancelled'::text)) AS cancelled_sessions,
            max(ts.session_date) FILTER (WHERE (ts.status = 'done'::text)) AS last_session_date
           FROM training_sessions ts
          WHERE ((ts.category_id IS NOT NULL) AND (ts.season_id IS NOT NULL))
          GROUP BY ts.category_id, ts.season_id
        ), member_stats AS (
         SELECT ts.category_id,
            ts.season_id,
            ma.member_id,
            count(*) AS records,
            count(*) FILTER (WHERE (ma.attendance_status = 'present'::text)) AS present,
            count(*) FILTER (WHERE (ma.attendance_status = 'absent'::text)) AS absent,
            count(*) FILTER (WHERE (ma.attendance_status = 'late'::text)) AS late,
            count(*) FILTER (WHERE (ma.attendance_status = 'excused'::text)) AS excused
           FROM (member_attendance ma
             JOIN training_sessions ts ON ((ts.id = ma.training_session_id)))
          WHERE ((ts.category_id IS NOT NULL) AND (ts.season_id IS NOT NULL))
          GROUP BY ts.category_id, ts.season_id, ma.member_id
        ), attendance_stats AS (
         SELECT member_stats.category_id,
            member_stats.season_id,
            (sum(member_stats.records))::bigint AS total_attendance_records,
            (sum(member_stats.present))::bigint AS present_count,
            (sum(member_stats.absent))::bigint AS absent_count,
            (sum(member_stats.late))::bigint AS late_count,
            (sum(member_stats.excused))::bigint AS excused_count,
            count(*) AS unique_members
           FROM member_stats
          GROUP BY member_stats.category_id, member_stats.season_id
        )
 SELECT s.category_id,
    s.season_id,
    s.total_sessions,
    s.completed_sessions,
    s.planned_sessions,
    s.cancelled_sessions,
    round(((100.0 * (s.completed_sessions)::numeric) / (NULLIF(s.total_sessions, 0))::numeric), 2) AS completion_rate,
    COALESCE(a.total_attendance_records, (0)::bigint) AS total_attendance_records,
    COALESCE(a.present_count, (0)::bigint) AS present_count,
    COALESCE(a.absent_count, (0)::bigint) AS absent_count,
    COALESCE(a.late_count, (0)::bigint) AS late_count,
    COALESCE(a.excused_count, (0)::bigint) AS excused_count,
    round(((100.0 * ((COALESCE(a.present_count, (0)::bigint) + COALESCE(a.late_count, (0)::bigint)))::numeric) / (NULLIF(a.total_attendance_records, 0))::numeric), 2) AS attendance_rate,
    COALESCE(a.unique_members, (0)::bigint) AS unique_members,
    s.last_session_date,
    now() AS last_refreshed
   FROM (session_stats s
     LEFT JOIN attendance_stats a ON (((a.category_id = s.category_id) AND (a.season_id = s.season_id))));
