-- Live progress for the app (Supabase Realtime) and wake-ups for workers (LISTEN/NOTIFY).

-- postgres_changes streams rows of tables in the supabase_realtime publication, each
-- checked against the subscriber's RLS (Supabase docs, guides/realtime).
do $$
begin
  if exists (select from pg_publication where pubname = 'supabase_realtime') then
    if not exists (select from pg_publication_tables
                    where pubname = 'supabase_realtime' and schemaname = 'public'
                      and tablename = 'generation_batches') then
      alter publication supabase_realtime add table public.generation_batches;
    end if;
    if not exists (select from pg_publication_tables
                    where pubname = 'supabase_realtime' and schemaname = 'public'
                      and tablename = 'generations') then
      alter publication supabase_realtime add table public.generations;
    end if;
  end if;
end
$$;

-- A doorbell for workers on direct Postgres: one notification per statement that makes
-- work runnable (new items, retries, released items). The table stays the truth; a lost
-- notification costs one poll interval.
create function private.notify_runnable_generations() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if exists (select from new_rows n where n.status = 'pending') then
    perform pg_notify('portraitkit_generations', '');
  end if;
  return null;
end
$$;

create trigger generations_notify_inserts
  after insert on public.generations
  referencing new table as new_rows
  for each statement execute function private.notify_runnable_generations();

create trigger generations_notify_updates
  after update on public.generations
  referencing new table as new_rows
  for each statement execute function private.notify_runnable_generations();

revoke all on function private.notify_runnable_generations() from public, anon, authenticated;
