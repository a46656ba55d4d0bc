// The app's side of the generated types, as tests/test_typescript.py compiles it with
// `tsc --strict` next to the output of `portraitkit gen types typescript`
// (written as ./database.types.ts). If this stops compiling, the app would too.
import {
  Constants,
  ERROR_STATUS,
  type BatchGenerationsView,
  type Database,
  type ErrorCode,
  type Generation,
  type GenerationBatch,
  type Json,
  type Tables,
} from "./database.types"

type Functions = Database["public"]["Functions"]
type BatchStatus = Database["public"]["Enums"]["batch_status"]

// Rows as the app receives them.
declare const batch: GenerationBatch
declare const generation: Generation
declare const card: BatchGenerationsView

// A generation belongs to one batch: `batch_id` is a uuid string, never null.
export const batchId: string = generation.batch_id
export const sameBatch: boolean = generation.batch_id === batch.id
export const sameRow: Tables<"generations"> = generation

// Nullable columns are `T | null`; statuses are the enum's literals.
export const cover: string | null = batch.cover_image_url
export const finished: readonly BatchStatus[] = ["completed", "partial", "failed", "cancelled"]
export const isFinished: boolean = finished.includes(batch.status)
export const allStatuses: readonly BatchStatus[] = Constants.public.Enums.batch_status

// The view's row: every column nullable, `generations` is JSON.
export const cardGenerations: Json | null = card.generations
export const cardStatus: BatchStatus | null = card.batch_status

// supabase-js's `rpc(name, args)`, reduced to its types.
declare function rpc<Name extends keyof Functions>(
  name: Name,
  args: Functions[Name]["Args"],
): Promise<{
  data: Functions[Name]["Returns"] | null
  error: { code: ErrorCode; message: string; details: Json } | null
}>

// Arguments with a default may be left out.
export const createArgs: Functions["create_generation_batch"]["Args"] = {
  style_keys: ["watercolor", "noir"],
  source_image_path: "0b5a7c6e-4f1d-4c8e-9a57-3d2b1e0f9a11/source.png",
  custom_prompt: "in the rain",
}

export async function createBatch(): Promise<string> {
  const { data, error } = await rpc("create_generation_batch", createArgs)
  if (error !== null) {
    const status: number = ERROR_STATUS[error.code]
    throw new Error(`${error.code} (${status}): ${error.message}`)
  }
  if (data === null) throw new Error("no batch id")
  return data // the new batch's uuid
}

export async function listBatches(): Promise<Json | null> {
  const { data } = await rpc("list_batches", { page_size: 20 })
  return data
}

// Error details are JSON; codes are a closed set with an HTTP status each.
export const details: Json = { required: 3, available: 1, styles: ["noir"], note: null }
export const code: ErrorCode = "insufficient_credits"
export const status: number = ERROR_STATUS[code]
