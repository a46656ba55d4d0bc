-- A doorbell for anyone watching a batch over direct Postgres (`portraitkit batches watch`):
-- one notification per batch per statement that changed it, on channel
-- portraitkit_batches with the batch id as payload. On Supabase, Realtime carries the
-- same changes (generation_batches is in the supabase_realtime publication).
-- NOTIFY is delivered at commit and folds duplicates within a transaction.

create function private.notify_batch_changes() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  changed uuid;
begin
  for changed in select distinct n.id from new_rows n loop
    perform pg_notify('portraitkit_batches', changed::text);
  end loop;
  return null;
end
$$;

create trigger generation_batches_notify_updates
  after update on public.generation_batches
  referencing new table as new_rows
  for each statement execute function private.notify_batch_changes();

revoke all on function private.notify_batch_changes() from public, anon, authenticated;
