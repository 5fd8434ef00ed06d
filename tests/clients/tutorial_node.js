const WebSocket = require('ws');

const token = '';
const wsUrl = `wss://api.voipbin.net/v1.0/ws?token=${token}`;

// Create WebSocket connection
const ws = new WebSocket(wsUrl);

ws.on('open', function() {
  console.log('WebSocket connection established');

  // Subscribe to events
  const subscription = {
    type: 'subscribe',
    topics: [
      'customer_id:12345678-1234-1234-1234-123456789012:call:*',
      'customer_id:12345678-1234-1234-1234-123456789012:message:*',
      'customer_id:12345678-1234-1234-1234-123456789012:queue:*'
    ]
  };

  ws.send(JSON.stringify(subscription));
  console.log('Subscribed to events');
});

ws.on('message', function(data) {
  const message = JSON.parse(data);
  const eventType = message.event_type;

  console.log(`Received event: ${eventType}`);

  // Process events
  switch(eventType) {
    case 'call.status':
      console.log(`Call ${message.data.id}: ${message.data.status}`);
      break;

    case 'queue.joined':
      console.log(`Caller ${message.data.call_id} joined queue ${message.data.queue_id}`);
      // Notify agents
      notifyAgents(message.data);
      break;

    case 'message.received':
      console.log(`Message: ${message.data.text}`);
      // Process message
      processIncomingMessage(message.data);
      break;
  }
});

ws.on('error', function(error) {
  console.error('WebSocket error:', error);
});

ws.on('close', function(code, reason) {
  console.log(`WebSocket closed: ${code} - ${reason}`);

  // Implement reconnection
  setTimeout(function() {
    console.log('Reconnecting...');
    // Recreate connection
  }, 5000);
});

function notifyAgents(queueData) {
  // Notify available agents about new call in queue
  console.log(`Notifying agents about queue entry`);
}

function processIncomingMessage(messageData) {
  // Auto-respond or route to agent
  console.log(`Processing message from ${messageData.source.target}`);
}
