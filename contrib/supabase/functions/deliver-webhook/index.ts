// deliver-webhook: drop-in replacement of intime-v3's edge function of the same name
// (supabase/functions/deliver-webhook/index.ts), for hosts that run webhook-dispatcher.
//
// The host's router calls this function right after it inserts a test ping or a replay into
// webhook_deliveries, or sets a DLQ row back to `pending`. The original sent the row itself,
// without looking at its status, so with the dispatcher running the receiver got the request
// twice and two writers raced on the row and on webhooks.consecutive_failures.
//
// This version sends NOTHING and writes NOTHING. The dispatcher picks up every due `pending`
// and `retrying` row, whoever wrote it, signs it (X-InTime-Signature and Standard Webhooks),
// retries it with the org's policy and records every attempt on the same row. Here the row is
// only looked up, so the caller gets the answer it always got:
//   - OPTIONS                          -> 'ok' with the same CORS headers;
//   - the delivery or webhook is unknown -> 500 {"error": "Delivery not found: <id>"} (as before);
//   - the webhook is not active        -> 200 {"success": false, "error": "Webhook not active"}
//                                         (the dispatcher marks the row failed, "Webhook is not
//                                         active", exactly as the original did);
//   - otherwise                        -> 200 {"success": true, "queued": true, "delivery_id",
//                                         "status"}: handed over to the dispatcher, which a
//                                         trigger on webhook_deliveries has already woken.
//
// Same path, same request body ({delivery_id, webhook_id, org_id}), same secrets
// (SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY). Deploy: see docs/host-adoption.md.

import { serve } from 'https://deno.land/std@0.168.0/http/server.ts'
import { createClient } from 'https://esm.sh/@supabase/supabase-js@2'

const corsHeaders = {
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Allow-Headers': 'authorization, x-client-info, apikey, content-type',
}

interface DeliveryPayload {
  delivery_id: string
  webhook_id: string
  org_id: string
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...corsHeaders, 'Content-Type': 'application/json' },
  })
}

serve(async (req) => {
  if (req.method === 'OPTIONS') {
    return new Response('ok', { headers: corsHeaders })
  }

  const supabase = createClient(
    Deno.env.get('SUPABASE_URL')!,
    Deno.env.get('SUPABASE_SERVICE_ROLE_KEY')!,
  )

  try {
    const { delivery_id, webhook_id, org_id }: DeliveryPayload = await req.json()

    // Read-only: never update the row, never call the receiver.
    const { data: delivery, error: deliveryError } = await supabase
      .from('webhook_deliveries')
      .select('id, status, webhook_id, org_id')
      .eq('id', delivery_id)
      .single()
    if (deliveryError || !delivery) {
      throw new Error(`Delivery not found: ${delivery_id}`)
    }

    const { data: webhook, error: webhookError } = await supabase
      .from('webhooks')
      .select('id, status, deleted_at')
      .eq('id', webhook_id ?? delivery.webhook_id)
      .single()
    if (webhookError || !webhook) {
      throw new Error(`Webhook not found: ${webhook_id}`)
    }

    if (webhook.status !== 'active' || webhook.deleted_at !== null) {
      return json({ success: false, error: 'Webhook not active' })
    }

    return json({
      success: true,
      queued: true,
      delivery_id: delivery.id,
      org_id: org_id ?? delivery.org_id,
      status: delivery.status,
    })
  } catch (error) {
    console.error('deliver-webhook (webhook-dispatcher):', error)
    return json({ error: error instanceof Error ? error.message : 'Unknown error' }, 500)
  }
})
